"""Distributed training: Ray Train DDP workers over the shard reader, with the code-store actor.

`train_distributed` joins or starts Ray, creates the run's code-store actor (which restores the
run's latest snapshot), builds a `TorchTrainer` and runs `fit()`. Each worker runs the same
`train_loop` as local training, with a `Runtime` for its rank: DDP (gloo on CPU, NCCL on GPU), a
`RayClient` on the store actor, and `ray.train.report` (a barrier: every rank reports at the same
steps). Rank 0 prints progress and writes checkpoints into the run folder (atomic renames; the
store actor writes the table snapshot into the same checkpoint). Metrics go to MLflow from one
process only: the tracker's callback on the Ray Train controller.

Checkpoints live in the run folder (`acn_dist.runs`) and are the single source of truth for
resume, local or distributed, after a worker failure (Ray Train restarts the worker group, which
resumes from them) or when the same run id is started again. (Ray Train's own checkpoint
manager is not used: `ray.train.report` is called without a checkpoint.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayTaskError
from ray.train import TrainingFailedError

from acn_dist.codes.actor import create_store_actor
from acn_dist.codes.client import RayClient
from acn_dist.config import Config, from_dict
from acn_dist.errors import AcnError
from acn_dist.runs.folder import RunFolder
from acn_dist.train.cluster import check_resources, connect
from acn_dist.train.loop import Runtime, train_loop
from acn_dist.train.metrics import say


def quiet_ray_train_reports() -> None:
    """Ray Train logs every report (the whole metrics dict) at INFO; our progress line says it.

    Not a public API: Ray names that logger after the file of its private module
    `ray.train.v2._internal.execution.context` (`logging.getLogger(__file__)`), and no public
    setting silences it. `tests/test_distributed.py` checks that the logger is still there, so a
    Ray upgrade that moves it fails a test instead of flooding the terminal."""
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: keep its logging as it is
        pass


def worker_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: `train_loop` with this rank's runtime."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    quiet_ray_train_reports()
    config = from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    actor = loop_config["store_actor"]
    store = RayClient(actor, config.codes.max_updates_in_flight) if actor is not None else None

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if world == 1:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        extra = {"checkpoint": str(checkpoint)} if checkpoint else {}
        ray.train.report({**metrics, "rank": rank, **extra})

    barrier = torch.distributed.barrier if torch.distributed.is_initialized() else (lambda: None)
    train_loop(config, Runtime(store=store, rank=rank, world=world, device=device, wrap=wrap,
                               report=report, barrier=barrier))


def refusal_in(failure: BaseException) -> AcnError | None:
    """The project's own error behind a failed training attempt, if one of the workers raised
    one (a bad shard, a refused store call, NaN codes): deterministic, never worth a retry."""
    causes = list(getattr(failure, "worker_failures", {}).values()) or [failure]
    for cause in causes:
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, RayTaskError):
                cause = cause.cause
                continue
            if isinstance(cause, AcnError):
                return type(cause)(*cause.args)
            cause, seen = cause.__cause__, seen + 1
    return None


def fit_retrying_faults(attempt: Callable[[], None], max_failures: int) -> None:
    """Run `attempt` (one Ray Train `fit`); after a fault (a killed worker, a lost node) run it
    again, resuming from the last checkpoint, up to `max_failures` times. A refusal (`AcnError`)
    from any worker is raised at once, as itself."""
    for number in range(max_failures + 1):
        try:
            attempt()
            return
        except TrainingFailedError as failure:
            refusal = refusal_in(failure)
            if refusal is not None:
                raise refusal from None
            if number == max_failures:
                raise
            first_line = str(failure).strip().splitlines()[-1][:200]
            say(f"training attempt {number + 1} failed ({first_line}); resuming from the last checkpoint "
                f"(retry {number + 1} of train.max_failures={max_failures})")


def prepare_cluster(config: Config) -> str:
    """Join (or start) Ray and refuse a run it cannot host; says where the run goes."""
    where = connect(config)
    check_resources(config)
    return where


def train_distributed(config: Config, train_size: int, where: str, owner: str = "",
                      tracker: Any = None) -> dict[str, Any]:
    """Run `config` on Ray Train (joined by `prepare_cluster`) over a training split of
    `train_size` data; returns the summary of the run (steps, checkpoint, history). Paths in
    `config` must be absolute (workers do not share the driver's working directory). The store
    actor's name carries the `owner` token: only this run's own processes reach it."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run = RunFolder.at(config.train.storage_path, config.train.run_id)
    actor = None
    if config.uses_code_table:
        actor = create_store_actor(config.train.run_id, owner, train_size, config.model.code_size,
                                   dataclasses.asdict(config.codes), run_folder=str(run.path))
        restored = ray.get(actor.stats.remote())["restored_from"]
        say(f"code store: actor {config.train.run_id!r}, {train_size} x {config.model.code_size} table"
            + (f", restored from {restored}" if restored else ", initialised N(0, 1)"))
    callbacks = [tracker.ray_train_callback()] if tracker is not None and tracker.active else []
    say(f"training {config.train.run_id} with {config.train.num_workers} workers on {where}")

    def attempt() -> None:
        TorchTrainer(
            worker_loop,
            train_loop_config={"config": config.to_dict(), "store_actor": actor},
            scaling_config=ScalingConfig(num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
                                         placement_strategy=config.cluster.placement_strategy),
            # Retries are ours (below): Ray Train's own would also retry a refusal.
            run_config=RunConfig(name=config.train.run_id, storage_path=config.train.storage_path,
                                 failure_config=FailureConfig(max_failures=0), callbacks=callbacks),
        ).fit()

    try:
        fit_retrying_faults(attempt, config.train.max_failures)
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
    history = run.history()
    checkpoint = run.latest_checkpoint()
    return {"run_id": config.train.run_id, "step": int(history[-1]["step"]) if history else 0,
            "checkpoint": str(checkpoint) if checkpoint else None, "history": history}
