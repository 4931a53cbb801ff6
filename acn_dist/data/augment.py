"""Random translation of training images, deterministic per datum and epoch.

Every datum moves by its own (dy, dx), each in [-max_shift, max_shift], drawn from the same
counter-based hash as the binarisation (keyed by seed, epoch and id, on a stream of its own), so a
datum's view does not depend on which rank, worker or batch reads it and resume gives the same
images. Pixels moved in from outside the frame are 0, the background of the digit and clothing
datasets. Training only: the code table holds the codes of the moved views (what the neighbour
search saw, and the train codes `acn-dist export` gives); evaluation and the probes encode the
images as they are.
"""

from __future__ import annotations

import numpy as np

from acn_dist.data.binarize import pixel_uniforms

# a stream of its own: offsets are independent of the binarisation's pixel uniforms
_SHIFT_STREAM = 0x5348494654


def offsets(ids: np.ndarray, max_shift: int, seed: int, epoch: int) -> np.ndarray:
    """int64[len(ids), 2]: each datum's (dy, dx), uniform on [-max_shift, max_shift]."""
    uniforms = pixel_uniforms(ids, 2, seed ^ _SHIFT_STREAM, epoch)
    return np.floor(uniforms * (2 * max_shift + 1)).astype(np.int64) - max_shift


def shift(images: np.ndarray, ids: np.ndarray, max_shift: int, seed: int, epoch: int) -> np.ndarray:
    """images [B, C, H, W] moved by their datum's offset, zero filled; unchanged when max_shift is 0."""
    if max_shift <= 0:
        return images
    height, width = images.shape[-2:]
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(max_shift, max_shift)] * 2)
    out = np.empty_like(images)
    for row, (dy, dx) in enumerate(offsets(ids, max_shift, seed, epoch)):
        # out[y, x] = images[y - dy, x - dx]: the content moves down by dy and right by dx
        top, left = max_shift - dy, max_shift - dx
        out[row] = padded[row, ..., top:top + height, left:left + width]
    return out
