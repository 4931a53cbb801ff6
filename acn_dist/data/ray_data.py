"""The Ray Data path over the same shards: `ray.data.read_webdataset` -> the same batches.

Use it when a Ray Data pipeline suits better (e.g. `ray.train.get_dataset_shard`); the default
reader is `ShardLoader`. Samples are checked by the same `decode_sample` as the default reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from acn_dist.data.reader import Batch, Shard, decode_sample, split_shards, to_batch


class _Decode:
    """Ray Data batch function: raw webdataset columns -> id, image, label columns."""

    def __init__(self, shards: list[Shard], image_shape: tuple[int, ...], labelled: bool):
        self.by_name = {Path(s.path).name: s for s in shards}
        self.image_shape, self.labelled = image_shape, labelled

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, images, labels = [], [], []
        members = [k for k in batch if k not in ("__url__",)]
        for row in range(len(batch["__key__"])):
            sample: dict[str, Any] = {k: batch[k][row] for k in members}
            shard = self.by_name[Path(str(batch["__url__"][row])).name]
            sample_id, image, label = decode_sample(sample, shard, self.image_shape, self.labelled)
            ids.append(sample_id)
            images.append(image)
            labels.append(label)
        return {"id": np.asarray(ids, dtype=np.int64), "x": np.stack(images),
                "label": np.asarray(labels, dtype=np.int64)}


def ray_dataset(folder: str | Path, split: str) -> Any:
    """A `ray.data.Dataset` of one split with columns id (int64), x (uint8 image), label (int64)."""
    import ray.data

    manifest, shards = split_shards(folder, split)
    raw = ray.data.read_webdataset([s.path for s in shards], decoder=None, include_paths=False)
    decode = _Decode(shards, tuple(manifest["image_shape"]), bool(manifest.get("labelled", True)))
    return raw.map_batches(decode, batch_format="numpy")


def iter_ray_batches(dataset: Any, batch_size: int, binarization: str = "none", seed: int = 0,
                     epoch: int = 0) -> Iterator[Batch]:
    """The same `(ids, x float[B, C, H, W], labels)` batches as `ShardLoader.epoch`."""
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield to_batch(list(batch["id"]), list(batch["x"]), list(batch["label"]), binarization,
                       seed, epoch)


__all__ = ["ray_dataset", "iter_ray_batches"]
