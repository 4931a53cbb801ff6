"""WebDataset shards and their manifest: the data contract between `prepare` and training.

Layout of one dataset folder:
    manifest.json
    train-000000.tar, train-000001.tar, ...   (ids 0..N-1: the rows of the code table)
    test-000000.tar, ...                       (ids N..N+M-1)
A sample is `__key__` = zero-padded global id, `x.npy` = uint8 image, `cls` = label (when known).
Each shard's size and sha256 are in the manifest; readers verify a shard's checksum the first
time a process opens it, so flipped bytes are refused, naming the shard and the command that
rebuilds the dataset. The folder may be local or in object storage (`data.root=s3://bucket/prefix`,
see `acn_dist.runs.storage`): shards are then written locally and uploaded, the manifest last.
Samples are written in a seeded random order (a source may come sorted by class; a shuffle
buffer cannot undo shards that each hold one class), and ids follow the written order. Writing goes to a hidden temporary folder that is renamed into place at the end, so a crash never
leaves a half dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from acn_dist.config import DataConfig
from acn_dist.data.sources import SourceData, load_source
from acn_dist.errors import DataError
from acn_dist.runs.storage import AnyPath, ObjectPath, atomic_folder, check_bucket, location

MANIFEST = "manifest.json"
FORMAT = "acn_dist.shards/2"  # /2: a sha256 per shard, samples in a seeded random order
SPLITS = ("train", "test")
ORDER = "seeded-permutation/1"  # how samples are ordered in the shards (part of the fingerprint)
KEY_DIGITS = 10


__all__ = ["DataError", "dataset_folder", "prepare", "read_manifest"]


def sha256_file(path: AnyPath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rebuild_command(folder: AnyPath, manifest: dict[str, Any]) -> str:
    """The command that writes this dataset again from its source, replacing the folder."""
    prepared = manifest.get("prepare_config", {})
    defaults = asdict(DataConfig())
    keys = [key for key in ("dataset", "source", "path", "shard_size", "shard_multiple", "synthetic_count",
                            "synthetic_size", "train_count", "seed") if key in prepared and prepared[key] != defaults[key]]
    settings = [f"data.root={location(folder).resolve().parent}", *(f"data.{key}={prepared[key]}" for key in keys)]
    return "acn-dist prepare --rebuild " + " ".join(f"--set {setting}" for setting in settings)


def sample_key(global_id: int) -> str:
    return f"{global_id:0{KEY_DIGITS}d}"


def shard_counts(count: int, shard_size: int, multiple: int) -> list[int]:
    """Samples per shard: the fewest shards of at most `shard_size` whose number is a multiple of
    `multiple` (so they split evenly over ranks x loader workers), sizes differing by at most 1."""
    shards = max(1, math.ceil(count / shard_size))
    shards = math.ceil(shards / multiple) * multiple
    shards = min(shards, count)
    base, extra = divmod(count, shards)
    return [base + 1 if i < extra else base for i in range(shards)]


def _fingerprint(config: DataConfig, source: SourceData) -> str:
    """What makes two preparations of a dataset identical."""
    relevant = {
        "source": config.source,
        "info": source.info,
        "shard_size": config.shard_size,
        "shard_multiple": config.shard_multiple,
        "synthetic": [config.synthetic_count, config.synthetic_size] if config.source == "synthetic" else None,
        "seed": config.seed,
        "order": ORDER,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _encode_npy(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, image, allow_pickle=False)
    return buffer.getvalue()


def _write_split(folder: Path, split: str, data: Any, id_start: int, config: DataConfig,
                 progress: tqdm) -> tuple[list[dict[str, Any]], bool]:
    """Write one split's shards; returns their manifest entries and whether every sample has a label."""
    counts = shard_counts(data.count, config.shard_size, config.shard_multiple)
    shards: list[dict[str, Any]] = []
    shard_index, in_shard, next_id = 0, 0, id_start
    labelled = True
    writer: wds.TarWriter | None = None
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    for images, labels in data.chunks():
        order = rng.permutation(len(images))  # an in-memory source is one chunk: a full permutation
        images, labels = images[order], (labels[order] if labels is not None else None)
        for row in range(len(images)):
            if writer is None:
                name = f"{split}-{shard_index:06d}.tar"
                writer = wds.TarWriter(str(folder / name))
                shards.append({"name": name, "count": counts[shard_index], "first_id": next_id})
            sample = {"__key__": sample_key(next_id), "x.npy": _encode_npy(images[row])}
            if labels is not None:
                sample["cls"] = str(int(labels[row])).encode()
            labelled = labelled and labels is not None
            writer.write(sample)
            next_id += 1
            in_shard += 1
            progress.update(1)
            if in_shard == counts[shard_index]:
                writer.close()
                writer = None
                shard_index, in_shard = shard_index + 1, 0
    if writer is not None or next_id - id_start != data.count:
        raise DataError(f"{split}: source gave {next_id - id_start} samples, expected {data.count}")
    for shard in shards:
        shard["bytes"] = (folder / shard["name"]).stat().st_size
        shard["sha256"] = sha256_file(folder / shard["name"])
    return shards, labelled


def prepare(config: DataConfig, quiet: bool = False, verify: bool = False, rebuild: bool = False) -> AnyPath:
    """Write `config.root/config.dataset` from the configured source; a matching dataset is kept
    (with `verify`, only once every shard's checksum has been checked).

    Returns the dataset folder. Raises `DataError` when a different dataset already has that name,
    or (with `verify`) when a shard was damaged; `rebuild` writes the dataset again from its source
    and replaces the folder in one rename, whatever it held.
    """
    target = dataset_folder(config)
    if isinstance(target, ObjectPath):
        check_bucket(target, "data.root")
    source = load_source(config)
    fingerprint = _fingerprint(config, source)
    if not rebuild and (target / MANIFEST).is_file():
        existing = read_manifest(target)
        if existing.get("fingerprint") == fingerprint:
            check_shard_files(target, existing, checksums=verify)
            return target
        raise DataError(
            f"{target} already holds a different dataset (source, shard settings or acn_dist's shard "
            f"format changed); write it again with `acn-dist prepare --rebuild` and the same settings, "
            "or choose another data.dataset"
        )
    if not rebuild and target.exists():
        raise DataError(f"{target} exists but has no {MANIFEST}; write it again with `acn-dist prepare --rebuild`")
    total = sum(split.count for split in source.splits.values())
    with atomic_folder(target) as scratch, \
            tqdm(total=total, desc=f"prepare {config.dataset}", unit="img", disable=quiet) as progress:
        splits, next_id, labelled = {}, 0, True
        for split in SPLITS:
            data = source.splits[split]
            shards, split_labelled = _write_split(scratch, split, data, next_id, config, progress)
            labelled = labelled and split_labelled
            splits[split] = {"count": data.count, "id_start": next_id, "id_stop": next_id + data.count,
                             "shards": shards}
            next_id += data.count
        manifest = {
            "format": FORMAT,
            "dataset": config.dataset,
            "source": {"kind": source.kind, **source.info},
            "synthetic": bool(source.info.get("synthetic", False)),
            "image_shape": list(source.image_shape),
            "dtype": "uint8",
            "num_classes": source.num_classes,
            "labelled": labelled,
            "splits": splits,
            "prepare_config": asdict(config),
            "fingerprint": fingerprint,
        }
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return target


REQUIRED_KEYS = ("format", "dataset", "image_shape", "dtype", "num_classes", "splits")


def read_manifest(folder: str | AnyPath) -> dict[str, Any]:
    """Load and check `folder/manifest.json`; errors name the file and the key at fault."""
    path = location(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing; run `acn-dist prepare` for this dataset first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error}); prepare the dataset again") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; prepare the dataset again")
    if manifest["format"] != FORMAT:
        raise DataError(f"{path}: format {manifest['format']!r} is not {FORMAT!r} (written by another "
                        f"version of acn_dist); write it again: {rebuild_command(location(folder), manifest)}")
    expected_start = 0
    for split in SPLITS:
        info = manifest["splits"].get(split)
        if info is None:
            raise DataError(f"{path}: no split {split!r}")
        total = sum(shard["count"] for shard in info["shards"])
        if total != info["count"] or info["id_stop"] - info["id_start"] != info["count"]:
            raise DataError(
                f"{path}: split {split!r} says {info['count']} samples, ids "
                f"{info['id_start']}..{info['id_stop']}, shards hold {total}"
            )
        if info["id_start"] != expected_start:
            raise DataError(f"{path}: split {split!r} ids start at {info['id_start']}, expected {expected_start}")
        expected_start = info["id_stop"]
    return manifest


def check_shard_files(folder: str | AnyPath, manifest: dict[str, Any], checksums: bool = False) -> None:
    """Every shard named by the manifest exists with the recorded size (catches truncation) and,
    with `checksums`, the recorded sha256 (catches any change)."""
    folder = location(folder)
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            path = folder / shard["name"]
            if not path.is_file():
                raise DataError(f"{path}: shard listed in {folder / MANIFEST} is missing; write the dataset "
                                f"again: {rebuild_command(folder, manifest)}")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise DataError(f"{path}: {size} bytes on disk, manifest says {shard['bytes']} (truncated or "
                                f"replaced); write the dataset again: {rebuild_command(folder, manifest)}")
            if checksums:
                verify_shard(path, shard["sha256"], manifest)


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime): shards this process has checked


def verify_shard(path: AnyPath, expected: str, manifest: dict[str, Any]) -> None:
    """Refuse a shard whose sha256 differs from the manifest's; each file is hashed once per process
    (again only if it changes on disk)."""
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns)
    if key in _VERIFIED:
        return
    refuse_changed_shard(path, sha256_file(path), expected, manifest)
    _VERIFIED.add(key)


def verify_shard_bytes(path: AnyPath, data: bytes, expected: str, manifest: dict[str, Any]) -> None:
    """Refuse a shard's bytes (read whole, from object storage) whose sha256 differs from the
    manifest's: the very bytes that will be decoded are the ones checked."""
    refuse_changed_shard(path, hashlib.sha256(data).hexdigest(), expected, manifest)


def refuse_changed_shard(path: AnyPath, actual: str, expected: str, manifest: dict[str, Any]) -> None:
    if actual != expected:
        raise DataError(f"shard {path.name}: sha256 {actual[:16]}... differs from the manifest's {expected[:16]}... "
                        f"(the file changed after prepare: damaged or replaced; {path}); write the dataset again: "
                        f"{rebuild_command(path.parent, manifest)}")


def dataset_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of the dataset it was trained on, to refuse another one later."""
    return {"name": manifest["dataset"], "image_shape": list(manifest["image_shape"]),
            "train_count": manifest["splits"]["train"]["count"], "test_count": manifest["splits"]["test"]["count"],
            "fingerprint": manifest.get("fingerprint", "")}


def dataset_folder(config: DataConfig) -> AnyPath:
    """Where a dataset's shards and manifest live: `data.root/data.dataset` (a local folder or an
    object-storage prefix)."""
    return location(config.root) / config.dataset
