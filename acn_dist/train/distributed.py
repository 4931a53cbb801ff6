"""Distributed training: Ray Train DDP workers over the shard reader, with the code-store actor.

The driver (`train_distributed`) joins or starts Ray, creates the run's code-store actor (which
restores the run's latest snapshot), builds a `TorchTrainer` and runs `fit()`. Each worker runs
the same `train_loop` as local training, with a `Runtime` for its rank: DDP (gloo on CPU, NCCL on
GPU), a `RayClient` on the store actor, and `ray.train.report` (a barrier: every rank reports at
the same steps). Rank 0 prints progress and writes checkpoints into the run folder (atomic
renames; the store actor writes the table snapshot into the same checkpoint). Metrics go to
MLflow from one process only: `MLflowCallback` on the Ray Train controller.

Checkpoints live in `<storage_path>/<run_id>/checkpoints/` and are the single source of truth for
resume, local or distributed, after a worker failure (Ray Train restarts the worker group, which
resumes from them) or when the same run id is started again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import ray
import torch

from acn_dist.codes.actor import RayClient, create_store_actor, get_store_actor
from acn_dist.config import Config, ConfigError, from_dict
from acn_dist.train.loop import Runtime, run_dir, train_loop


class ClusterError(RuntimeError):
    """Ray could not be reached or cannot host the run as configured."""


def connect(config: Config) -> str:
    """Join the cluster at `cluster.address` / $RAY_ADDRESS, else start a local single-node Ray.
    Returns a description of where the run goes."""
    address = config.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        return "the Ray instance this process already joined"
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, namespace=config.cluster.namespace, log_to_driver=True)
        except Exception as error:  # noqa: BLE001  (ConnectionError, TimeoutError, ValueError...)
            raise ClusterError(f"cannot join the Ray cluster at {address!r} (cluster.address or RAY_ADDRESS): "
                               f"{type(error).__name__}: {error}. Start it (`ray start --head`) or fix the "
                               "address; leave both empty for a local single-node Ray") from error
        return f"the Ray cluster at {address}"
    physical = os.cpu_count() or 1
    if config.train.num_workers > physical and not config.cluster.num_cpus:
        raise ClusterError(f"train.num_workers={config.train.num_workers} exceeds the {physical} CPUs of this "
                           "machine; lower it or join a cluster (cluster.address)")
    # Logical CPUs: the workers plus the store actor, even when the machine has fewer cores.
    needed = config.train.num_workers + config.codes.num_cpus
    ray.init(num_cpus=config.cluster.num_cpus or max(physical, needed), namespace=config.cluster.namespace,
             log_to_driver=True)  # with its dashboard: Ray Train's state API needs it
    return "a local single-node Ray"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A fast, clear failure for a GCS address (host:port, ray://host:port) nobody answers on;
    `ray.init` itself retries for minutes."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname or not parts.port:
        return
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"cannot join the Ray cluster at {address!r} (cluster.address or RAY_ADDRESS): nothing "
                           f"answers at {parts.hostname}:{parts.port} ({error}). Start it (`ray start --head`) or "
                           "fix the address; leave both empty for a local single-node Ray") from error


def check_resources(config: Config) -> None:
    """Refuse a run the cluster cannot host, instead of letting it wait forever for resources."""
    total = ray.cluster_resources()
    cpus_needed = config.train.num_workers + (config.codes.num_cpus if config.model.objective == "acn" else 0)
    gpus_needed = (config.train.num_workers if config.train.use_gpu else 0) + (
        config.codes.num_gpus if config.codes.backend == "gpu" else 0)
    if cpus_needed > total.get("CPU", 0):
        raise ClusterError(f"the run needs {cpus_needed} CPUs (train.num_workers={config.train.num_workers} + "
                           f"codes.num_cpus={config.codes.num_cpus}), the cluster has {total.get('CPU', 0):g}")
    if gpus_needed > total.get("GPU", 0):
        raise ClusterError(f"the run needs {gpus_needed} GPUs (train.use_gpu, codes.num_gpus), "
                           f"the cluster has {total.get('GPU', 0):g}")


def quiet_ray_train_reports() -> None:
    """Ray Train logs every report (the whole metrics dict) at INFO; our progress line says it."""
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
    store = (RayClient(get_store_actor(config.train.run_id), config.codes.max_updates_in_flight)
             if config.model.objective == "acn" else None)

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


def mlflow_callback(tracking_uri: str, mlflow_run_id: str) -> Any:
    from ray.train import UserCallback

    class MLflowCallback(UserCallback):
        """Logs rank 0's report (and the slowest rank's store wait) to MLflow: the only writer."""

        def __init__(self) -> None:
            self.client: Any = None
            self.failed = False

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if self.failed or not metrics:
                return
            from acn_dist.tracking import log_metrics

            main = dict(metrics[0])
            main["store_wait_ms_max_rank"] = max(m.get("store_wait_ms", 0.0) for m in metrics)
            try:
                if self.client is None:
                    from mlflow.tracking import MlflowClient

                    self.client = MlflowClient(tracking_uri=tracking_uri)
                log_metrics(self.client, mlflow_run_id, {k: v for k, v in main.items() if k not in ("step", "rank")},
                            int(main["step"]))
            except Exception as error:  # noqa: BLE001  (tracking must never stop training here)
                print(f"warning: MLflow logging stopped: {type(error).__name__}: {error}", flush=True)
                self.failed = True

    return MLflowCallback()


def train_distributed(config: Config, tracker: Any = None) -> dict[str, Any]:
    """Run `config` on Ray Train; returns the summary of the run (steps, checkpoint, history)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from acn_dist.train.driver import train_size

    if config.train.use_gpu and not torch.cuda.is_available() and not config.cluster.address:
        raise ConfigError("train.use_gpu=true but this machine has no CUDA device; set train.use_gpu=false "
                          "or join a GPU cluster (cluster.address)")
    # Workers do not share the driver's working directory: give them absolute paths.
    config.data.root = str(Path(config.data.root).resolve())
    config.train.storage_path = str(Path(config.train.storage_path).resolve())
    where = connect(config)
    check_resources(config)
    size = train_size(config)
    storage = Path(config.train.storage_path)
    folder = run_dir(config)
    actor = None
    if config.model.objective == "acn":
        actor = create_store_actor(config.train.run_id, size, config.model.code_size,
                                   dataclasses.asdict(config.codes), restore_from=str(folder))
        restored = ray.get(actor.stats.remote())["restored_from"]
        print(f"code store: actor {config.train.run_id!r}, {size} x {config.model.code_size} table"
              + (f", restored from {restored}" if restored else ", initialised N(0, 1)"), flush=True)
    callbacks = []
    if tracker is not None and tracker.active:
        callbacks.append(mlflow_callback(tracker.uri, tracker.run_id))
    print(f"training {config.train.run_id} with {config.train.num_workers} workers on {where}", flush=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config.to_dict()},
        scaling_config=ScalingConfig(num_workers=config.train.num_workers, use_gpu=config.train.use_gpu),
        run_config=RunConfig(
            name=config.train.run_id, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            callbacks=callbacks,
        ),
    )
    try:
        trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
    from acn_dist.train.checkpoint import latest_checkpoint
    from acn_dist.train.loop import read_history

    history = read_history(folder)
    checkpoint = latest_checkpoint(folder)
    return {"run_id": config.train.run_id, "step": history[-1]["step"] if history else 0,
            "checkpoint": str(checkpoint) if checkpoint else None, "history": history}
