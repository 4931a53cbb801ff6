"""Figures as PNG files: PCA of codes (the paper's Fig. 3), image grids (reconstructions,
daydream chains, prior samples)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402


def pca_plot(codes: np.ndarray, labels: np.ndarray, path: str | Path, title: str, seed: int = 0) -> Path:
    """First two principal components of the codes, coloured by class."""
    points = PCA(n_components=2, random_state=seed).fit_transform(codes)
    figure, axes = plt.subplots(figsize=(6, 6), dpi=100)
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    axes.legend(*scatter.legend_elements(), title="class", loc="best", fontsize=7, markerscale=0.8)
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def grid(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """images [rows, cols, C, H, W] in [0, 1] -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, 3] array."""
    rows, cols, channels, height, width = images.shape
    out = np.ones((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            image = images[r, c].transpose(1, 2, 0)
            if channels == 1:
                image = np.repeat(image, 3, axis=2)
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            out[top:top + height, left:left + width] = image
    return out


def save_grid(images: np.ndarray, path: str | Path) -> Path:
    """A PNG of exactly the grid's pixel size (no resampling)."""
    plt.imsave(path, np.clip(grid(images), 0, 1))
    return Path(path)
