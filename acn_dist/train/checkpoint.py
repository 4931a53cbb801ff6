"""Checkpoints: model, optimiser, step, position in the data, RNG states, config and code table.

A checkpoint is a folder `<run>/checkpoints/step-<step:09d>/` holding `state.pt` and `codes/`
(a code-store snapshot). It is written under a hidden temporary name and renamed into place when
complete, so an interrupted write never becomes "latest".
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
PATTERN = re.compile(r"^step-(\d{9})$")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if PATTERN.match(p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], store: Any,
                    keep: int = 2) -> Path:
    """Write `state` (torch-serialisable) and a snapshot of `store` as the checkpoint of `step`.

    `store` is anything with `snapshot(path)`: the in-process store or the actor client.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / checkpoint_name(step)
    scratch = folder / f".{target.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    scratch.mkdir()
    try:
        torch.save(state, scratch / "state.pt")
        store.snapshot(str((scratch / "codes").resolve()))
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {checkpoint} is not a complete checkpoint")
    return torch.load(path, map_location="cpu", weights_only=False)
