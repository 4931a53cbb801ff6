"""The run folder: one place that knows where a run keeps what.

    <train.storage_path>/<run_id>/
        owner.json          the lock: who trains this run now (host, pid, start time)
        config.yaml         the config the run was started with
        metrics.jsonl       every logged step, appended as it happens (rank 0)
        checkpoints/step-<step:09d>/   state.pt, meta.json, codes/ (see `acn_dist.runs.checkpoints`)
        codes/step-<step:09d>/         the store's own, more frequent, code-table snapshots
        final_checkpoint.txt           the last checkpoint, when training finished
        eval/               metrics.json, report.md and figures of `acn-dist evaluate`

Training, evaluation, export and the fault-injection tools all find these paths here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acn_dist.runs.checkpoints import PATTERN, latest_checkpoint, list_checkpoints, step_of
from acn_dist.runs.storage import atomic_write_text


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def at(cls, storage_path: str | Path, run_id: str) -> RunFolder:
        return cls(Path(storage_path) / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.path / "owner.json"

    @property
    def final_pointer(self) -> Path:
        return self.path / "final_checkpoint.txt"

    @property
    def snapshots_dir(self) -> Path:
        return self.path / "codes"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def exists(self) -> bool:
        return self.path.is_dir()

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def code_snapshots(self) -> list[tuple[int, Path]]:
        """Every complete code-table snapshot of the run, (store step, folder), oldest first:
        the store's own ones and those inside checkpoints."""
        found: list[tuple[int, Path]] = []
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

    def history(self) -> list[dict[str, float]]:
        """The metrics rows rank 0 wrote (all sessions of the run, in the order written)."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def append_history(self, row: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def write_final_pointer(self, checkpoint: Path) -> Path:
        return atomic_write_text(self.final_pointer, str(checkpoint.resolve()) + "\n")

