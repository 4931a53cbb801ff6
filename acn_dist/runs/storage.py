"""Writing folders and files so that a crash never leaves a half-written one that looks complete.

Every folder the project writes as a unit (a checkpoint, a code-table snapshot, a prepared
dataset) goes through `atomic_folder`: the contents are written into a hidden scratch folder
beside the target, flushed to disk, and renamed into place in one step. Readers therefore see
either the previous folder or the complete new one, never a mixture. Single files (a run's
config, its owner lock, a pointer) go through `atomic_write_text` in the same way.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def scratch_name(target: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `target`, unique to this process and moment."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{time.monotonic_ns()}"


def is_scratch(path: Path) -> bool:
    """Scratch folders (hidden, `.<name>.tmp-...`) are never complete results."""
    return path.name.startswith(".")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder entries themselves to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a scratch folder to fill; when the block ends without error it replaces `target`
    (an existing `target` is swapped out in the same way and then removed). On error the scratch
    folder is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_name(target)
    scratch.mkdir()
    try:
        yield scratch
        fsync_tree(scratch)
        if target.exists():
            old = scratch_name(target, "old")
            os.replace(target, old)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a scratch file and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_name(path)
    try:
        with open(scratch, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path
