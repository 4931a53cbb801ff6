"""Binarisation of uint8 images, deterministic per datum.

`static` gives every datum one fixed binary image (for evaluation); `dynamic` draws a fresh
Bernoulli sample per epoch (for training). Each pixel's uniform comes from a counter-based hash of
(seed, epoch, id, pixel), so a datum's binarisation does not depend on which rank, worker or batch
reads it: runs are reproducible and resume gives the same pixels.
"""

from __future__ import annotations

import numpy as np

MODES = ("none", "static", "dynamic")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pixel_uniforms(ids: np.ndarray, pixels: int, seed: int, epoch: int = 0) -> np.ndarray:
    """Uniforms in [0, 1), float32[len(ids), pixels], a pure function of (seed, epoch, id, pixel)."""
    with np.errstate(over="ignore"):
        # epoch -1 is the static stream; dynamic epochs are 0, 1, ...
        seed_key = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        key = _splitmix64(seed_key ^ np.uint64(epoch + 1))[0]
        counters = ids.astype(np.uint64)[:, None] * np.uint64(pixels) + np.arange(pixels, dtype=np.uint64)
        bits = _splitmix64(counters ^ key)
    return ((bits >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def binarize(images: np.ndarray, ids: np.ndarray, mode: str, seed: int, epoch: int = 0) -> np.ndarray:
    """uint8 images [B, ...] -> float32 in [0, 1] (`none`) or {0, 1} (`static`, `dynamic`)."""
    scaled = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if mode == "none":
        return scaled
    if mode not in MODES:
        raise ValueError(f"binarisation {mode!r} is not one of {MODES}")
    # static ignores the epoch; dynamic resamples every epoch.
    uniforms = pixel_uniforms(ids, scaled[0].size, seed, epoch if mode == "dynamic" else -1)
    return (uniforms.reshape(scaled.shape) < scaled).astype(np.float32)
