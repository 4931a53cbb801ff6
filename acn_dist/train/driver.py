"""The driver: one function builds everything from the config and trains.

`train(config)` with `train.num_workers=0` runs the loop in this process against an in-process
code store; with workers it runs Ray Train (see `acn_dist.train.distributed`). Values the config
leaves to the driver (a generated run id, absolute paths for processes with another working
directory) are filled in once, by `resolve`, before anything else sees the config.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from acn_dist.codes.client import LocalClient
from acn_dist.codes.factory import build_store
from acn_dist.config import Config, ConfigError, with_values
from acn_dist.data.shards import prepare, read_manifest
from acn_dist.runs.folder import RunFolder
from acn_dist.tracking import Tracker
from acn_dist.train.distributed import train_distributed
from acn_dist.train.loop import Runtime, train_loop


def new_run_id(config: Config) -> str:
    return f"{config.data.dataset}-{config.model.objective}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve(config: Config) -> Config:
    """The config every process of the run uses: a run id (generated when empty) and absolute
    data and storage paths (Ray workers do not share the driver's working directory)."""
    return with_values(config, {
        "train.run_id": config.train.run_id or new_run_id(config),
        "data.root": str(Path(config.data.root).resolve()),
        "train.storage_path": str(Path(config.train.storage_path).resolve()),
    })


def train_size(config: Config) -> int:
    """Data in the training split (the rows of the code table); prepares the dataset if needed."""
    return read_manifest(prepare(config.data, quiet=True))["splits"]["train"]["count"]


def train_local(config: Config, tracker: Tracker | None = None) -> dict[str, Any]:
    """Algorithm 1 in one process: in-process code store, no Ray."""
    config = resolve(config)
    store = (LocalClient(build_store(config.codes, train_size(config), config.model.code_size))
             if config.uses_code_table else None)
    RunFolder.at(config.train.storage_path, config.train.run_id).path.mkdir(parents=True, exist_ok=True)

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, int(metrics["step"]))

    return train_loop(config, Runtime(store=store, report=report))


def writable_run_folder(config: Config) -> RunFolder:
    """The run folder, created; refuses (before anything starts) a storage path it cannot write."""
    run = RunFolder.at(config.train.storage_path, config.train.run_id)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        probe = run.path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"train.storage_path={config.train.storage_path!r}: cannot write {run.path} "
                          f"({type(error).__name__}: {error}); point it at a writable folder (shared storage "
                          "on a cluster)") from error
    return run


def train(config: Config) -> dict[str, Any]:
    """Train as the config says: locally (`train.num_workers=0`) or on Ray Train; tracked in MLflow."""
    config = resolve(config)
    run = writable_run_folder(config)
    tracker = Tracker(config)
    tracker.start(config)
    run.write_config(config.to_yaml())
    tracker.log_artifact(run.config_file)
    status = "FAILED"
    try:
        if config.train.num_workers == 0:
            result = train_local(config, tracker)
        else:
            result = train_distributed(config, train_size(config), tracker)
        if result.get("checkpoint"):
            pointer = run.write_final_pointer(Path(result["checkpoint"]))
            tracker.set_tags({"acn_dist.checkpoint": str(Path(result["checkpoint"]).resolve())})
            tracker.log_artifact(pointer)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    result["mlflow_run_id"] = tracker.run_id
    result["tracking_uri"] = tracker.uri if tracker.run_id else None
    return result
