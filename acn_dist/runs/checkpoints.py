"""Checkpoints: weights that cannot run code, and their metadata as plain JSON.

A checkpoint is a folder `<run>/checkpoints/step-<step:09d>/` holding
- `state.pt`: tensors only (model and optimiser state, torch RNG state) plus plain numbers and
  lists (the numpy and Python RNG states). It is read with `torch.load(weights_only=True)`, so a
  crafted file cannot run code when loaded; it is refused instead.
- `meta.json`: step, epoch, position in the epoch, the config, the image shape and the dataset
  the model was trained on (name, shape, split sizes, fingerprint).
- `codes/`: a snapshot of the code table (empty for the VAE, which keeps none).
The folder is written with `atomic_folder`, so an interrupted write never becomes "latest". In
object storage (`s3://...`) the code-table snapshot is written first, straight to
`<checkpoint>/codes/` by whoever holds the table (the store actor may run on another node), then
`state.pt` and, last, `meta.json`: a checkpoint without `meta.json` is never listed.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from acn_dist.errors import RunError
from acn_dist.runs.storage import (
    AnyPath,
    ObjectPath,
    atomic_folder,
    location,
    remove_tree,
    staged_upload,
)

CHECKPOINT_DIR = "checkpoints"
PATTERN = re.compile(r"^step-(\d{9})$")
STATE, META, CODES = "state.pt", "meta.json", "codes"


class Snapshotter(Protocol):
    def snapshot(self, path: str) -> Any: ...


@dataclass(frozen=True)
class Checkpoint:
    path: AnyPath
    state: dict[str, Any]  # tensors: model, optimizer, rng
    meta: dict[str, Any]  # plain JSON: step, epoch, batch_in_epoch, config, image_shape, dataset

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def codes(self) -> AnyPath:
        return self.path / CODES


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from, as tensors and plain values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def step_of(path: AnyPath) -> int:
    return int(PATTERN.match(path.name).group(1))


def list_checkpoints(run_dir: str | AnyPath) -> list[AnyPath]:
    """Complete checkpoints of a run, oldest first."""
    folder = location(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if PATTERN.match(p.name) and (p / STATE).is_file() and (p / META).is_file()]
    return sorted(found, key=step_of)


def latest_checkpoint(run_dir: str | AnyPath) -> AnyPath | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(run_dir: str | AnyPath, state: dict[str, Any], meta: dict[str, Any],
                    codes: Snapshotter | None, keep: int = 2) -> AnyPath:
    """Write `state` (tensors), `meta` (plain JSON) and a snapshot of the code table (by whoever
    holds it: the in-process store or the store actor) as the checkpoint of `meta["step"]`; keep
    the newest `keep` checkpoints."""
    target = location(run_dir) / CHECKPOINT_DIR / checkpoint_name(int(meta["step"]))
    if isinstance(target, ObjectPath):
        remove_tree(target)  # an earlier, interrupted attempt at this step
        if codes is not None:
            codes.snapshot(str(target / CODES))
        with staged_upload(target) as scratch:
            torch.save(state, scratch / STATE)
            (scratch / META).write_text(json.dumps(meta, indent=1))
    else:
        _save_local(target, state, meta, codes)
    for old in list_checkpoints(run_dir)[:-keep]:
        remove_tree(old)
    return target


def _save_local(target: Path, state: dict[str, Any], meta: dict[str, Any], codes: Snapshotter | None) -> None:
    with atomic_folder(target) as scratch:
        torch.save(state, scratch / STATE)
        (scratch / META).write_text(json.dumps(meta, indent=1))
        if codes is not None:
            codes.snapshot(str((scratch / CODES).resolve()))
        else:
            (scratch / CODES).mkdir()


def load_checkpoint(path: str | AnyPath) -> Checkpoint:
    """Read a checkpoint; a `state.pt` holding anything but tensors and plain values is refused
    (it could run code), and so is a missing or unreadable part."""
    path = location(path)
    for part in (STATE, META):
        if not (path / part).is_file():
            raise RunError(f"{path / part} is missing: {path} is not a complete checkpoint")
    try:
        source = path / STATE if isinstance(path, Path) else io.BytesIO((path / STATE).read_bytes())
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{path / STATE} holds more than tensors and plain values and was refused "
                       f"unread ({first_line}); only load checkpoints written by acn_dist") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise RunError(f"{path / STATE} cannot be read ({type(error).__name__}: {error}); "
                       "it is damaged: use an earlier checkpoint") from None
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path / META} is not valid JSON ({error}); use an earlier checkpoint") from None
    return Checkpoint(path, state, meta)
