"""Figures as PNG files that a person can read: image grids enlarged by nearest-neighbour scaling
with coloured gridlines between the cells, rows and columns labelled (reconstructions, daydream
chains, prior samples, neighbour strips), and the PCA of codes (the paper's Fig. 3) with class
names and a legend.

A labelled grid is drawn pixel for pixel (`figimage`, no resampling): its PNG size follows from
the grid's size and the labels' margins alone (`labelled_size`), so tests can check it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

DPI = 100
GRIDLINE = (0.35, 0.55, 0.85)  # a colour no greyscale image holds, so cells stand apart
FONT_PT = 8
CHAR_PX = 7  # width of one character at FONT_PT and DPI, rounded up (margins are estimated from it)
LINE_PX = 13  # height of one text line
MARGIN_PX = 6

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


def class_names(dataset: str, classes: int = 10) -> list[str]:
    """Human names of a dataset's classes 0..classes-1: Fashion-MNIST's garments, MNIST's digits,
    else "class i"."""
    name = dataset.lower()
    if "fashion" in name and classes <= len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES[:classes])
    if "mnist" in name or "digits" in name:
        return [str(i) for i in range(classes)]
    return [f"class {i}" for i in range(classes)]


def label_name(label: int | None, names: Sequence[str]) -> str:
    """A label as a person reads it: its class name, or "-" for an unlabelled datum."""
    if label is None or label < 0:
        return "-"
    return names[label] if label < len(names) else str(label)


def scale_for(height: int, target_px: int = 72) -> int:
    """Nearest-neighbour enlargement that makes an image about `target_px` tall (at least 2x)."""
    return max(2, -(-target_px // height))


def pca_plot(codes: np.ndarray, labels: np.ndarray, path: str | Path, title: str, names: Sequence[str] = (),
             seed: int = 0) -> Path:
    """First two principal components of the codes, one colour per class, named in the legend."""
    points = PCA(n_components=2, random_state=seed).fit_transform(codes)
    figure, axes = plt.subplots(figsize=(7.5, 6), dpi=DPI)
    colours = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for index, label in enumerate(np.unique(labels)):
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, color=colours(index % colours.N),
                     label=label_name(int(label), names) if names else str(label))
    axes.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=3,
                frameon=False)
    axes.set_xlabel("principal component 1")
    axes.set_ylabel("principal component 2")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def grid(images: np.ndarray, pad: int = 1, scale: int = 1) -> np.ndarray:
    """images [rows, cols, C, H, W] in [0, 1] -> one RGB array [rows*(H*scale+pad)+pad,
    cols*(W*scale+pad)+pad, 3]: each image enlarged `scale` times (nearest neighbour), `pad`-pixel
    gridlines between and around the cells."""
    rows, cols, channels, height, width = images.shape
    cell_h, cell_w = height * scale, width * scale
    out = np.empty((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), dtype=np.float32)
    out[:] = GRIDLINE
    for r in range(rows):
        for c in range(cols):
            image = np.clip(images[r, c], 0, 1).transpose(1, 2, 0)
            if channels == 1:
                image = np.repeat(image, 3, axis=2)
            image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            top, left = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
            out[top:top + cell_h, left:left + cell_w] = image
    return out


def save_grid(images: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """A PNG of exactly the grid's pixel size (no resampling, no labels)."""
    plt.imsave(path, grid(images, scale=scale))
    return Path(path)


def _lines(label: str) -> int:
    return label.count("\n") + 1 if label else 0


def _widest(labels: Sequence[str]) -> int:
    return max((len(line) for label in labels for line in label.split("\n")), default=0)


def labelled_size(rows: int, cols: int, height: int, width: int, scale: int, title: str = "",
                  row_labels: Sequence[str] = (), column_labels: Sequence[str] = ()) -> tuple[int, int]:
    """(height, width) in pixels of the PNG `labelled_grid` writes for these arguments."""
    grid_h, grid_w = rows * (height * scale + 1) + 1, cols * (width * scale + 1) + 1
    left, top, _ = _margins(title, row_labels, column_labels)
    total_w = max(left + grid_w + MARGIN_PX, 2 * MARGIN_PX + CHAR_PX * len(title))
    return top + grid_h + MARGIN_PX, total_w


def _margins(title: str, row_labels: Sequence[str], column_labels: Sequence[str]) -> tuple[int, int, int]:
    """(left margin, top margin, height of the column-label band) in pixels."""
    left = MARGIN_PX + (CHAR_PX * _widest(row_labels) + MARGIN_PX if row_labels else 0)
    band = LINE_PX * max((_lines(label) for label in column_labels), default=0)
    top = MARGIN_PX + (LINE_PX + 6 if title else 0) + (band + 4 if band else 0)
    return left, top, band


def labelled_grid(images: np.ndarray, path: str | Path, title: str = "", row_labels: Sequence[str] = (),
                  column_labels: Sequence[str] = (), scale: int | None = None) -> Path:
    """images [rows, cols, C, H, W] in [0, 1] as an enlarged grid with gridlines, a title, a label
    left of every row and above every column. Pixel size: `labelled_size(...)`."""
    rows, cols, _, height, width = images.shape
    scale = scale or scale_for(height)
    pixels = grid(images, scale=scale)
    total_h, total_w = labelled_size(rows, cols, height, width, scale, title, row_labels, column_labels)
    left, top, band = _margins(title, row_labels, column_labels)
    figure = plt.figure(figsize=(total_w / DPI, total_h / DPI), dpi=DPI, facecolor="white")
    figure.figimage(pixels, xo=left, yo=total_h - top - pixels.shape[0], origin="upper")

    def text(x_px: float, y_px: float, words: str, **style: object) -> None:  # y from the top
        figure.text(x_px / total_w, 1 - y_px / total_h, words, fontsize=FONT_PT, **style)

    if title:
        text(MARGIN_PX, MARGIN_PX, title, va="top", ha="left", fontweight="bold")
    cell_h, cell_w = height * scale + 1, width * scale + 1
    for r, label in enumerate(row_labels[:rows]):
        text(left - MARGIN_PX, top + 1 + r * cell_h + cell_h / 2, label, va="center", ha="right")
    for c, label in enumerate(column_labels[:cols]):
        text(left + 1 + c * cell_w + cell_w / 2, top - 4 - band / 2, label, va="center", ha="center",
             linespacing=1.1)
    figure.savefig(path, dpi=DPI, facecolor="white")
    plt.close(figure)
    return Path(path)
