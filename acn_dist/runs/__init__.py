"""Runs on disk: the run folder and its layout, one owner per run, checkpoints, atomic writes."""

from acn_dist.runs.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from acn_dist.runs.folder import RunFolder
from acn_dist.runs.lock import RunLock
from acn_dist.runs.storage import atomic_folder, atomic_write_text

__all__ = ["Checkpoint", "RunFolder", "RunLock", "atomic_folder", "atomic_write_text", "load_checkpoint",
           "save_checkpoint"]
