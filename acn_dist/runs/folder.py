"""The run folder: one place that knows where a run keeps what.

    <train.storage_path>/<run_id>/
        owner.json          the lock: who trains this run now (host, pid, start time)
        config.yaml         the config the run was started with
        metrics.jsonl       every logged step, appended as it happens (rank 0)
        checkpoints/step-<step:09d>/   state.pt, meta.json, codes/ (see `acn_dist.runs.checkpoints`)
        codes/step-<step:09d>/         the store's own, more frequent, code-table snapshots
        final_checkpoint.txt           the last checkpoint, when training finished
        eval/               metrics.json, report.md and figures of `acn-dist evaluate`

Training, evaluation, export and the fault-injection tools all find these paths here. The storage
path may be a local folder or object storage (`s3://bucket/prefix`, see `acn_dist.runs.storage`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import yaml

from acn_dist.config import Config
from acn_dist.errors import ConfigError, RunError
from acn_dist.runs.checkpoints import PATTERN, latest_checkpoint, list_checkpoints, step_of
from acn_dist.runs.storage import AnyPath, ObjectPath, atomic_write_text, check_bucket, location

# Keys a resumed run must keep (None: the whole section): they decide the shapes of the model and
# the code table, and which data the rows of the table are.
RESUME_FIXED: dict[str, tuple[str, ...] | None] = {
    "model": None, "prior": None, "data": ("dataset", "binarize"),
}


def check_writable(storage_path: str | AnyPath) -> None:
    """Refuse a storage path this process cannot create or write, without writing anything (object
    storage: its bucket must exist and be reachable with the environment's credentials)."""
    where = location(storage_path)
    if isinstance(where, ObjectPath):
        check_bucket(where, "train.storage_path")
        return
    path = where.resolve()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.storage_path={str(storage_path)!r}: {existing} is not a writable folder, so "
                          f"{path} cannot hold runs; point it at a writable folder (shared storage on a cluster)")


@dataclass(frozen=True)
class RunFolder:
    path: AnyPath

    @classmethod
    def at(cls, storage_path: str | AnyPath, run_id: str) -> RunFolder:
        return cls(location(storage_path) / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> AnyPath:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> AnyPath:
        return self.path / "metrics.jsonl"

    @property
    def lock_file(self) -> AnyPath:
        return self.path / "owner.json"

    @property
    def final_pointer(self) -> AnyPath:
        return self.path / "final_checkpoint.txt"

    @property
    def snapshots_dir(self) -> AnyPath:
        return self.path / "codes"

    @property
    def eval_dir(self) -> AnyPath:
        return self.path / "eval"

    def exists(self) -> bool:
        return self.path.is_dir()

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoints(self) -> list[AnyPath]:
        return list_checkpoints(self.path)

    def latest_checkpoint(self) -> AnyPath | None:
        return latest_checkpoint(self.path)

    def code_snapshots(self) -> list[tuple[int, AnyPath]]:
        """Every complete code-table snapshot of the run, (store step, folder), oldest first:
        the store's own ones and those inside checkpoints."""
        found: list[tuple[int, AnyPath]] = []
        if self.snapshots_dir.is_dir():
            for folder in self.snapshots_dir.iterdir():
                if PATTERN.match(folder.name) and (folder / "header.json").is_file():
                    found.append((step_of(folder), folder))
        for checkpoint in self.checkpoints():
            if (checkpoint / "codes" / "header.json").is_file():
                found.append((step_of(checkpoint), checkpoint / "codes"))
        return sorted(found, key=lambda item: item[0])

    # --- config and history ------------------------------------------------------------------

    def saved_config(self) -> dict[str, Any] | None:
        if not self.config_file.is_file():
            return None
        return yaml.safe_load(self.config_file.read_text())

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_file, text)

    def refuse_incompatible(self, config: Config) -> None:
        """Running again with the same run id resumes: refuse (before anything is written) a
        config whose model, prior or data would not fit what the run has trained."""
        saved = self.saved_config()
        if saved is None:
            return
        new = config.to_dict()
        for section, keys in RESUME_FIXED.items():
            for key in keys or new[section]:
                before, after = saved.get(section, {}).get(key), new[section][key]
                if before is not None and before != after:
                    raise RunError(
                        f"run {self.run_id!r} was trained with {section}.{key}={before!r}; resuming it with "
                        f"{after!r} would not fit its checkpoints ({self.config_file}): keep {before!r}, or "
                        "start a new run (another train.run_id)")

    def history(self) -> list[dict[str, float]]:
        """The metrics rows rank 0 wrote (all sessions of the run, in the order written)."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def append_history(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        if isinstance(self.metrics_file, ObjectPath):  # no appends in object storage: rewrite it
            before = self.metrics_file.read_text() if self.metrics_file.is_file() else ""
            self.metrics_file.write_text(before + line)
            return
        with open(self.metrics_file, "a") as handle:
            handle.write(line)

    def write_final_pointer(self, checkpoint: str | AnyPath) -> AnyPath:
        return atomic_write_text(self.final_pointer, str(location(checkpoint).resolve()) + "\n")

