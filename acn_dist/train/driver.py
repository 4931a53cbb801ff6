"""The driver: one function builds everything from the config and trains.

`train(config)` with `train.num_workers=0` runs the loop in this process against an in-process
code store; with workers it runs Ray Train (see `acn_dist.train.distributed`). Values the config
leaves to the driver (a generated run id, absolute paths for processes with another working
directory) are filled in once, by `resolve`, before anything else sees the config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from acn_dist.codes.client import LocalClient
from acn_dist.codes.factory import build_store
from acn_dist.config import Config, with_values
from acn_dist.data.shards import prepare, read_manifest
from acn_dist.errors import Stopped, StoreError
from acn_dist.runs.checkpoints import META
from acn_dist.runs.folder import RunFolder, check_writable
from acn_dist.runs.lock import RunLock
from acn_dist.runs.storage import absolute, location
from acn_dist.tracking import Tracker, check_location
from acn_dist.train.distributed import prepare_cluster, train_distributed
from acn_dist.train.loop import Runtime, train_loop


def new_run_id(config: Config) -> str:
    return f"{config.data.dataset}-{config.model.objective}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve(config: Config) -> Config:
    """The config every process of the run uses: a run id (generated when empty) and absolute
    data and storage locations (Ray workers, on this node or another, do not share the driver's
    working directory)."""
    return with_values(config, {
        "train.run_id": config.train.run_id or new_run_id(config),
        "data.root": absolute(config.data.root),  # URIs (s3://...) as they are
        "train.storage_path": absolute(config.train.storage_path),
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


def preflight(config: Config) -> int:
    """Everything that can refuse the run, checked before anything of it is written: the storage
    path, the dataset (prepared when missing), `codes.k` against its size, a config that would not
    fit the run being resumed, an MLflow location that would vanish with a Ray job, and (for Ray
    Train) the cluster. Returns the training split's size."""
    check_location(config.tracking)
    check_writable(config.train.storage_path)
    size = train_size(config)
    if config.uses_code_table and not 1 <= config.codes.k < size:
        raise StoreError(f"codes.k={config.codes.k} must be in 1..{size - 1}: the train split has {size} data")
    RunFolder.at(config.train.storage_path, config.train.run_id).refuse_incompatible(config)
    return size


def log_checkpoint(tracker: Tracker, run: RunFolder, checkpoint: str) -> None:
    """The final checkpoint's pointer in the run folder, and in MLflow its location (tag and
    `final_checkpoint.txt`) and metadata (`checkpoint/meta.json`: step, epoch, config, data)."""
    where = absolute(checkpoint)
    run.write_final_pointer(where)
    tracker.set_tags({"acn_dist.checkpoint": where})
    tracker.log_text(where + "\n", "final_checkpoint.txt")
    meta = location(where) / META
    if meta.is_file():
        tracker.log_text(meta.read_text(), f"checkpoint/{META}")


def train(config: Config) -> dict[str, Any]:
    """Train as the config says: locally (`train.num_workers=0`) or on Ray Train; tracked in MLflow.

    A refused start writes nothing (no run folder, no MLflow run); a started run is owned by this
    process (`owner.json`) until it ends, and a second start of the same run is refused."""
    config = resolve(config)
    size = preflight(config)
    run = RunFolder.at(config.train.storage_path, config.train.run_id)
    RunLock(run.lock_file, config.train.run_id).refuse_if_owned()  # at once, before joining Ray
    where = prepare_cluster(config) if config.train.num_workers > 0 else "this process"
    with RunLock(run.lock_file, config.train.run_id) as lock:
        tracker = Tracker(config)
        tracker.start(config)
        run.write_config(config.to_yaml())
        tracker.log_text(config.to_yaml(), "config.yaml")
        status = "FAILED"
        try:
            if config.train.num_workers == 0:
                result = train_local(config, tracker)
            else:
                result = train_distributed(config, size, where, owner=lock.token, tracker=tracker)
            if result.get("checkpoint"):
                log_checkpoint(tracker, run, result["checkpoint"])
            status = "FINISHED"
        except Stopped:
            status = "KILLED"  # MLflow's status for a run stopped on purpose; its checkpoint resumes it
            raise
        finally:
            tracker.finish(status)
    result["mlflow_run_id"] = tracker.run_id
    result["tracking_uri"] = tracker.uri if tracker.run_id else None
    return result
