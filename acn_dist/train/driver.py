"""The driver: one function builds everything from the config and trains.

`train(config)` with `train.num_workers=0` runs the loop in this process against an in-process
code store; with workers it runs Ray Train (see `acn_dist.train.distributed`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from acn_dist.codes.client import LocalClient
from acn_dist.codes.factory import build_store
from acn_dist.config import Config, ConfigError
from acn_dist.data.shards import prepare, read_manifest
from acn_dist.tracking import Tracker
from acn_dist.train.loop import Runtime, run_dir, train_loop


def new_run_id(config: Config) -> str:
    return f"{config.data.dataset}-{config.model.objective}-{time.strftime('%Y%m%d-%H%M%S')}"


def ensure_run_id(config: Config) -> str:
    if not config.train.run_id:
        config.train.run_id = new_run_id(config)
    return config.train.run_id


def train_size(config: Config) -> int:
    return read_manifest(prepare(config.data, quiet=True))["splits"]["train"]["count"]


def train_local(config: Config, tracker: Tracker | None = None) -> dict[str, Any]:
    """Algorithm 1 in one process: in-process code store, no Ray."""
    ensure_run_id(config)
    size = train_size(config)
    store = build_store(config.codes, size, config.model.code_size) if config.model.objective == "acn" else None

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, int(metrics["step"]))

    runtime = Runtime(store=LocalClient(store) if store is not None else None, report=report)
    return train_loop(config, runtime)


def writable_run_dir(config: Config) -> Path:
    """The run folder, created; refuses (before anything starts) a storage path it cannot write."""
    folder = run_dir(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"train.storage_path={config.train.storage_path!r}: cannot write {folder} "
                          f"({type(error).__name__}: {error}); point it at a writable folder (shared storage "
                          "on a cluster)") from error
    return folder


def train(config: Config) -> dict[str, Any]:
    """Train as the config says: locally (`train.num_workers=0`) or on Ray Train; tracked in MLflow."""
    ensure_run_id(config)
    folder = writable_run_dir(config)
    tracker = Tracker(config)
    tracker.start(config)
    (folder / "config.yaml").write_text(config.to_yaml())
    tracker.log_artifact(folder / "config.yaml")
    status = "FAILED"
    try:
        if config.train.num_workers == 0:
            result = train_local(config, tracker)
        else:
            from acn_dist.train.distributed import train_distributed

            result = train_distributed(config, tracker)
        if result.get("checkpoint"):
            checkpoint = str(Path(result["checkpoint"]).resolve())
            pointer = folder / "final_checkpoint.txt"
            pointer.write_text(checkpoint + "\n")
            tracker.set_tags({"acn_dist.checkpoint": checkpoint})
            tracker.log_artifact(pointer)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    result["mlflow_run_id"] = tracker.run_id
    result["tracking_uri"] = tracker.uri if tracker.run_id else None
    return result
