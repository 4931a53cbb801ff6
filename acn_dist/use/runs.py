"""The runs under `train.storage_path`: what each is, how far it got, how it scored; and which run
(and checkpoint) a command means when the user names none.

The latest-run rule: a command that takes a run uses, in this order, `--checkpoint PATH`, `--run
RUN` (or `train.run_id`), else the newest *finished* run under the storage path, newest by the
time its final checkpoint was written. A finished run is one whose training ended and wrote
`final_checkpoint.txt`; a run still training or stopped part-way is only used when named.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from acn_dist.config import RUN_ID_PATTERN, RUN_ID_RULE, Config
from acn_dist.errors import RunError
from acn_dist.runs.checkpoints import CHECKPOINT_DIR, META, STATE, latest_checkpoint, step_of
from acn_dist.runs.folder import RunFolder
from acn_dist.runs.lock import read_owner
from acn_dist.runs.storage import AnyPath, location
from acn_dist.use.tables import text_table

STATUSES = ("finished", "running", "stopped", "empty")


@dataclass(frozen=True)
class RunInfo:
    """One run folder as `acn-dist runs` shows it."""

    run: RunFolder
    status: str  # one of STATUSES
    checkpoint: AnyPath | None  # the final checkpoint of a finished run, else the latest one
    config: dict[str, Any] = field(default_factory=dict)  # the saved config.yaml
    last_row: dict[str, Any] = field(default_factory=dict)  # the last row of metrics.jsonl
    evaluation: dict[str, Any] = field(default_factory=dict)  # eval/metrics.json, when evaluated

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.checkpoint) if self.checkpoint is not None else None

    @property
    def checkpoint_time(self) -> float:
        """When the checkpoint was written (mtime of its meta.json); 0 without one."""
        return (self.checkpoint / META).stat().st_mtime_ns / 1e9 if self.checkpoint is not None else 0.0

    def setting(self, section: str, key: str) -> Any:
        return self.config.get(section, {}).get(key)


def final_checkpoint(run: RunFolder) -> AnyPath | None:
    """The checkpoint `final_checkpoint.txt` names (or, when the run folder was moved, the run's
    latest checkpoint); None when training has not finished."""
    if not run.final_pointer.is_file():
        return None
    named = location(run.final_pointer.read_text().strip())
    # The pointer holds an absolute path: a run folder copied or mounted elsewhere finds the
    # checkpoint of the same name in itself first.
    for candidate in (run.path / CHECKPOINT_DIR / named.name, named):
        if (candidate / STATE).is_file() and (candidate / META).is_file():
            return candidate
    return latest_checkpoint(run.path)


def is_running(run: RunFolder) -> bool:
    owner = read_owner(run.lock_file)
    return owner is not None and not owner.dead(stale_after_s=60.0)


def read_json(path: AnyPath) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe(run: RunFolder) -> RunInfo:
    final = final_checkpoint(run)
    running = is_running(run)  # (a finished run trained again is running)
    latest = run.latest_checkpoint() if running or final is None else final
    if running:
        status = "running"
    elif final is not None:
        status = "finished"
    else:
        status = "stopped" if latest is not None else "empty"
    history = run.history()
    return RunInfo(run, status, latest, run.saved_config() or {}, history[-1] if history else {},
                   read_json(run.eval_dir / "metrics.json"))


def list_runs(storage_path: str | AnyPath) -> list[RunInfo]:
    """Every run folder under `storage_path` (those holding a config or a checkpoint), newest
    checkpoint first."""
    root = location(storage_path)
    if not root.is_dir():
        return []
    runs = [RunFolder(path) for path in root.iterdir()
            if path.is_dir() and not path.name.startswith(".") and RUN_ID_PATTERN.match(path.name)]
    infos = [describe(run) for run in runs if run.config_file.is_file() or run.checkpoints()]
    return sorted(infos, key=lambda info: (info.checkpoint_time, info.run_id), reverse=True)


def latest_finished(storage_path: str | AnyPath) -> RunInfo:
    """The newest finished run under `storage_path` (by checkpoint time); refuses when none is."""
    finished = [info for info in list_runs(storage_path) if info.status == "finished"]
    if not finished:
        raise RunError(f"no finished run under {location(storage_path).resolve()} (train.storage_path): train one "
                       "(`make demo` or `acn-dist train`), or name a run with --run or a checkpoint with --checkpoint")
    return finished[0]


@dataclass(frozen=True)
class Chosen:
    """The checkpoint a command uses, the run it belongs to, and why it was chosen."""

    checkpoint: AnyPath
    run_id: str
    why: str

    def line(self) -> str:
        return f"using run {self.run_id!r} ({self.why}), checkpoint step {checkpoint_step(self.checkpoint)}: {self.checkpoint}"


def checkpoint_step(checkpoint: AnyPath) -> int | None:
    try:
        return step_of(checkpoint)
    except AttributeError:  # a checkpoint folder under another name: its meta.json says
        return read_json(checkpoint / META).get("step")


def named_run(storage_path: str | AnyPath, run_id: str) -> RunFolder:
    """The folder of run `run_id`; refuses an id that is no run there, naming the runs that are."""
    if not RUN_ID_PATTERN.match(run_id):
        raise RunError(f"run id {run_id!r} is not a run id ({RUN_ID_RULE}); list the runs with `acn-dist runs`")
    run = RunFolder.at(storage_path, run_id)
    if not run.exists():
        known = [info.run_id for info in list_runs(storage_path)]
        listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "") if known else "none"
        raise RunError(f"no run {run_id!r} under {location(storage_path).resolve()} (train.storage_path); runs there: "
                       f"{listed}; list them with `acn-dist runs`")
    return run


def choose_checkpoint(config: Config, checkpoint: str | None = None, run_id: str | None = None) -> Chosen:
    """What a command that takes a run uses: `checkpoint` (a checkpoint or run folder), else run
    `run_id` (or `train.run_id`) under `train.storage_path`, else the latest finished run."""
    storage = config.train.storage_path
    if checkpoint:
        path = location(checkpoint)
        if (path / STATE).is_file():
            return Chosen(path, path.parent.parent.name, f"checkpoint {path}")
        found = final_checkpoint(RunFolder(path)) or latest_checkpoint(path)
        if found is None:
            raise RunError(f"--checkpoint {path}: holds no complete checkpoint (no state.pt, no checkpoints/step-*)")
        return Chosen(found, path.name, f"run folder {path}")
    run_id = run_id or config.train.run_id
    if run_id:
        info = describe(named_run(storage, run_id))
        if info.checkpoint is None:
            raise RunError(f"run {run_id!r} has no checkpoint yet under {info.run.path} (status {info.status})")
        why = "named" if info.status == "finished" else f"named; {info.status}, so its latest checkpoint"
        return Chosen(info.checkpoint, run_id, why)
    info = latest_finished(storage)
    return Chosen(info.checkpoint, info.run_id, f"the latest finished run under {location(storage).resolve()}")


def percent(value: Any) -> str | None:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else None


def number(value: Any, digits: int = 1) -> str | None:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else None


def runs_table(infos: list[RunInfo]) -> str:
    """`acn-dist runs`: one line per run, newest first, with its headline measures."""
    headers = ["run id", "dataset", "objective", "decoder", "steps", "status", "checkpoint written",
               "linear probe (codes)", "test nats/image", "mean samples/s"]
    rows = []
    for info in infos:
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.checkpoint_time)) if info.checkpoint else None
        rows.append([info.run_id, info.setting("data", "dataset"), info.setting("model", "objective"),
                     info.setting("model", "decoder"), info.step, info.status, written,
                     percent(info.evaluation.get("linear_codes")),
                     number(info.evaluation.get("test_nats_per_image"), 2),
                     number(info.last_row.get("mean_samples_per_s"), 0)])
    return text_table(headers, rows)
