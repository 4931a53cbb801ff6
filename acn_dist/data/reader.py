"""Reading shards for training and evaluation.

`ShardLoader` gives one rank its batches `(ids int64[B], x float32[B, C, H, W], labels int64[B])`:
- each rank, and each loader worker inside a rank, reads a disjoint set of shards, re-dealt every
  epoch by a seeded permutation shared by all ranks;
- every rank yields the **same number of batches** per epoch (`steps(epoch)`), so DDP never sees
  uneven batch counts;
- samples are shuffled with a seeded buffer; an epoch can start part-way (`skip=`) for resume;
- every sample is checked against the manifest: bad data raises `DataError` naming shard and key.

Shards in object storage are read whole with one request (`open_input_stream` of the folder's
pyarrow filesystem), their sha256 checked on those very bytes, then decoded from memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from acn_dist.data.augment import shift
from acn_dist.data.binarize import binarize
from acn_dist.data.shards import (
    DataError,
    check_shard_files,
    read_manifest,
    verify_shard,
    verify_shard_bytes,
)
from acn_dist.errors import ConfigError
from acn_dist.runs.storage import AnyPath, ObjectPath, location

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
PICKLE_SUFFIXES = (".pyd", ".pickle", ".pkl")
NO_LABEL = -1


@dataclass(frozen=True)
class Shard:
    path: str
    count: int
    first_id: int
    sha256: str
    manifest: dict[str, Any] = field(compare=False, repr=False)


def split_shards(folder: str | AnyPath, split: str) -> tuple[dict[str, Any], list[Shard]]:
    folder = location(folder)
    manifest = read_manifest(folder)
    check_shard_files(folder, manifest)
    shards = [Shard(str(folder / s["name"]), s["count"], s["first_id"], s["sha256"], manifest)
              for s in manifest["splits"][split]["shards"]]
    return manifest, shards


def assign_shards(
    shards: list[Shard], world: int, workers: int, epoch: int, seed: int, shuffle: bool
) -> list[list[list[Shard]]]:
    """`[rank][worker] -> shards`: a seeded permutation per epoch, dealt round robin."""
    order = list(shards)
    if shuffle:
        permutation = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in permutation]
    per_rank = [order[rank::world] for rank in range(world)]
    return [[rank_shards[w::workers] for w in range(workers)] for rank_shards in per_rank]


def _batches_of(worker_shards: list[Shard], batch_size: int) -> int:
    return math.ceil(sum(s.count for s in worker_shards) / batch_size)


def decode_sample(
    sample: dict[str, Any], shard: Shard, image_shape: tuple[int, ...], labelled: bool
) -> tuple[int, np.ndarray, int]:
    """Check one raw sample against the manifest and return (id, image uint8, label)."""
    name = Path(shard.path).name
    key = sample.get("__key__", "?")
    where = f"shard {name}, sample {key}"
    for member in sample:
        if member.endswith(PICKLE_SUFFIXES):
            raise DataError(f"{where}: member {member!r} is a pickle; pickle members are refused")
    if "x.npy" not in sample:
        raise DataError(f"{where}: no x.npy member (found {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        sample_id = int(key)
    except ValueError:
        raise DataError(f"{where}: key is not an integer id") from None
    if not shard.first_id <= sample_id < shard.first_id + shard.count:
        raise DataError(
            f"{where}: id {sample_id} is outside the shard's range "
            f"{shard.first_id}..{shard.first_id + shard.count - 1} from the manifest"
        )
    try:
        image = np.load(io.BytesIO(sample["x.npy"]), allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{where}: x.npy is not a plain numpy array ({error})") from None
    if image.dtype != np.uint8 or tuple(image.shape) != image_shape:
        raise DataError(
            f"{where}: image is {image.dtype}{tuple(image.shape)}, manifest says uint8{image_shape}"
        )
    if "cls" in sample:
        label = int(sample["cls"])
    elif labelled:
        raise DataError(f"{where}: no cls member but the manifest says the dataset is labelled")
    else:
        label = NO_LABEL
    return sample_id, image, label


def raw_samples(shard: Shard) -> Iterator[dict[str, Any]]:
    """The raw webdataset samples of a shard whose checksum has been verified."""
    where = location(shard.path)
    if not isinstance(where, ObjectPath):
        verify_shard(where, shard.sha256, shard.manifest)  # the first time this process opens it
        return wds.tarfile_samples([{"url": shard.path}])
    try:
        data = where.read_bytes()
    except OSError as error:
        raise DataError(f"shard {where.name}: cannot be read from {where} ({error}); check that the object "
                        "exists and the credentials (AWS_ACCESS_KEY_ID, ...) may read it") from None
    verify_shard_bytes(where, data, shard.sha256, shard.manifest)
    files = wds.tariterators.tar_file_expander([{"url": shard.path, "stream": io.BytesIO(data)}])
    return wds.tariterators.group_by_keys(files)


def read_shard(shard: Shard, image_shape: tuple[int, ...], labelled: bool) -> Iterator[tuple[int, np.ndarray, int]]:
    """All samples of one shard, in file order, each checked; the count must match the manifest,
    and the file its checksum."""
    seen: set[int] = set()
    name = Path(shard.path).name
    samples = raw_samples(shard)
    try:
        for sample in samples:
            sample_id, image, label = decode_sample(sample, shard, image_shape, labelled)
            if sample_id in seen:
                raise DataError(f"shard {name}, sample {sample['__key__']}: duplicate id {sample_id}")
            seen.add(sample_id)
            yield sample_id, image, label
    except DataError:
        raise
    except Exception as error:  # tarfile / gzip / webdataset errors on corrupt input
        raise DataError(f"shard {name}: cannot be read ({error.args[0] if error.args else error}); "
                        "it is corrupt or truncated: prepare the dataset again") from None
    if len(seen) != shard.count:
        raise DataError(
            f"shard {name}: holds {len(seen)} samples, manifest says {shard.count} (truncated?)"
        )


def to_batch(ids: list[int], images: list[np.ndarray], labels: list[int], binarization: str,
             seed: int, epoch: int, max_shift: int = 0) -> Batch:
    array = np.stack(images)
    if array.ndim == 3:
        array = array[:, None]  # [B, H, W] -> [B, 1, H, W]
    else:
        array = array.transpose(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
    id_array = np.asarray(ids, dtype=np.int64)
    array = shift(array, id_array, max_shift, seed=seed, epoch=epoch)
    x = binarize(array, id_array, binarization, seed=seed, epoch=epoch)
    return torch.from_numpy(id_array), torch.from_numpy(x), torch.as_tensor(labels, dtype=torch.int64)


class _ShardStream(IterableDataset):
    """The batches of one rank for one epoch; with loader workers each takes its own shards."""

    def __init__(self, loader: ShardLoader, epoch: int):
        self.loader, self.epoch = loader, epoch

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        loader = self.loader
        shards = assign_shards(loader.shards, loader.world, workers, self.epoch, loader.seed,
                               loader.shuffle)[loader.rank][worker]
        rng = np.random.default_rng([loader.seed, self.epoch, loader.rank, worker])
        buffer: list[tuple[int, np.ndarray, int]] = []
        batch: list[tuple[int, np.ndarray, int]] = []

        def emit(item: tuple[int, np.ndarray, int]) -> Batch | None:
            batch.append(item)
            if len(batch) < loader.batch_size:
                return None
            out = self._collate(batch)
            batch.clear()
            return out

        for shard in shards:
            for item in read_shard(shard, loader.image_shape, loader.labelled):
                if not loader.shuffle or loader.shuffle_buffer <= 1:
                    ready = emit(item)
                elif len(buffer) < loader.shuffle_buffer:
                    buffer.append(item)
                    continue
                else:
                    slot = int(rng.integers(len(buffer)))
                    buffer[slot], item = item, buffer[slot]
                    ready = emit(item)
                if ready is not None:
                    yield ready
        rng.shuffle(buffer)
        for item in buffer:
            ready = emit(item)
            if ready is not None:
                yield ready
        if batch:
            yield self._collate(batch)

    def _collate(self, items: list[tuple[int, np.ndarray, int]]) -> Batch:
        ids, images, labels = zip(*items)
        return to_batch(list(ids), list(images), list(labels), self.loader.binarization,
                        self.loader.seed, self.epoch, self.loader.max_shift)


class ShardLoader:
    """Batches of one split for one rank. Iterate `loader.epoch(e)`; `loader.steps(e)` batches each."""

    def __init__(
        self,
        folder: str | AnyPath,
        split: str,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        seed: int = 0,
        binarization: str = "none",
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        max_shift: int = 0,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside 0..{world - 1}")
        self.manifest, self.shards = split_shards(folder, split)
        if len(self.shards) < world * max(workers, 1):
            raise DataError(
                f"{location(folder) / 'manifest.json'}: split {split!r} has {len(self.shards)} shards, fewer "
                f"than ranks x loader workers = {world} x {max(workers, 1)}; prepare with a smaller "
                "data.shard_size or a larger data.shard_multiple"
            )
        self.split, self.batch_size, self.rank, self.world = split, batch_size, rank, world
        self.workers, self.seed, self.binarization = workers, seed, binarization
        self.shuffle, self.shuffle_buffer, self.max_shift = shuffle, shuffle_buffer, max_shift
        self.image_shape = tuple(self.manifest["image_shape"])
        if not 0 <= max_shift < min(self.image_shape[:2]):
            raise ConfigError(
                f"data.augment_shift={max_shift} does not fit the {self.image_shape[0]}x{self.image_shape[1]} images "
                f"of {location(folder) / 'manifest.json'}: give 0 (no shift) up to {min(self.image_shape[:2]) - 1}"
            )
        self.labelled = bool(self.manifest.get("labelled", True))
        info = self.manifest["splits"][split]
        self.count, self.id_start = info["count"], info["id_start"]

    def steps(self, epoch: int) -> int:
        """Batches every rank yields in `epoch`: the fewest any rank has (all ranks agree)."""
        assignment = assign_shards(self.shards, self.world, max(self.workers, 1), epoch, self.seed,
                                   self.shuffle)
        return min(sum(_batches_of(w, self.batch_size) for w in rank) for rank in assignment)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """This rank's batches of `epoch`, starting after the first `skip` (for resume)."""
        steps = self.steps(epoch)
        stream = _ShardStream(self, epoch)
        if self.workers > 0:
            batches: Any = DataLoader(stream, batch_size=None, num_workers=self.workers,
                                      multiprocessing_context="fork")
        else:
            batches = stream
        for index, batch in enumerate(batches):
            if index >= steps:
                break
            if index >= skip:
                yield batch

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole split in id order, un-binarised: (ids int64[N], images uint8[N, ...], labels)."""
        ids, images, labels = [], [], []
        for shard in self.shards:
            for sample_id, image, label in read_shard(shard, self.image_shape, self.labelled):
                ids.append(sample_id)
                images.append(image)
                labels.append(label)
        order = np.argsort(ids)
        return (np.asarray(ids, dtype=np.int64)[order], np.stack(images)[order],
                np.asarray(labels, dtype=np.int64)[order])
