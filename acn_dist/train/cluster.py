"""Joining Ray: a cluster at an address, or a local single-node instance; and whether it can host
the run."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import ray

from acn_dist.config import Config
from acn_dist.errors import ClusterError

__all__ = ["ClusterError", "check_reachable", "check_resources", "connect", "live_nodes", "release"]

_started_here = False  # whether `connect` started the Ray instance this process is joined to


def connect(config: Config) -> str:
    """Join the cluster at `cluster.address` / $RAY_ADDRESS, else start a local single-node Ray.
    Returns a description of where the run goes."""
    global _started_here
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
        _started_here = True
        return f"the Ray cluster at {address}"
    physical = os.cpu_count() or 1
    if config.train.num_workers > physical and not config.cluster.num_cpus:
        raise ClusterError(f"train.num_workers={config.train.num_workers} exceeds the {physical} CPUs of this "
                           "machine; lower it or join a cluster (cluster.address)")
    # Logical CPUs: the workers plus the store actor, even when the machine has fewer cores.
    needed = config.train.num_workers + config.codes.num_cpus
    ray.init(num_cpus=config.cluster.num_cpus or max(physical, needed), namespace=config.cluster.namespace,
             log_to_driver=True)  # with its dashboard: Ray Train's state API needs it
    _started_here = True
    return "a local single-node Ray"


def release() -> None:
    """Leave the Ray instance `connect` joined or started; one this process was already joined to
    (by its caller) is left alone."""
    global _started_here
    if _started_here and ray.is_initialized():
        ray.shutdown()
    _started_here = False


DEFAULT_PORTS = {"ray": 10001, "tcp": 6379}  # the Ray client server; the GCS


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A fast, clear failure for a GCS address (host:port, ray://host:port) nobody answers on;
    `ray.init` itself retries for minutes."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    where = f"cannot join the Ray cluster at {address!r} (cluster.address or RAY_ADDRESS)"
    try:
        port = parts.port if parts.port is not None else DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number
        port = 0
    if not parts.hostname or not port:
        raise ClusterError(f"{where}: not host:port with a port in 1..65535; the head prints its address at "
                           "`ray start --head`; leave both empty for a local single-node Ray")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"{where}: nothing answers at {parts.hostname}:{port} ({error}). Start it "
                           "(`ray start --head`) or fix the address; leave both empty for a local single-node Ray"
                           ) from error


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster this process joined."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def check_resources(config: Config, nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse a run the cluster cannot host, instead of letting it wait forever for resources.

    CPUs and GPUs are counted on the cluster's live nodes (`nodes`: each node's total resources,
    by default read from Ray), never on this process's machine: a CPU head drives GPU workers.
    Each Ray Train worker takes 1 CPU (and 1 GPU with `train.use_gpu`); the code-store actor takes
    `codes.num_cpus` CPUs and, for `codes.backend=gpu`, `codes.num_gpus` GPUs, all on one node."""
    nodes = live_nodes() if nodes is None else nodes
    workers = config.train.num_workers
    store_cpus = config.codes.num_cpus if config.uses_code_table else 0
    store_gpus = config.codes.num_gpus if config.uses_code_table and config.codes.backend == "gpu" else 0
    worker_gpus = workers if config.train.use_gpu else 0
    cpus = sum(node.get("CPU", 0) for node in nodes)
    gpus = sum(node.get("GPU", 0) for node in nodes)
    on = f"on its {len(nodes)} live node{'s' if len(nodes) != 1 else ''}"
    if workers + store_cpus > cpus:
        raise ClusterError(f"the run needs {workers + store_cpus} CPUs (train.num_workers={workers} + "
                           f"codes.num_cpus={store_cpus}), the cluster has {cpus:g} {on}; lower them or add nodes")
    if worker_gpus + store_gpus > gpus:
        needs = " + ".join(part for part in (
            f"{worker_gpus} for train.use_gpu=true with train.num_workers={workers}" if worker_gpus else "",
            f"{store_gpus} for codes.backend=gpu with codes.num_gpus={store_gpus}" if store_gpus else "") if part)
        raise ClusterError(f"the run needs {worker_gpus + store_gpus} GPUs ({needs}), the cluster has {gpus:g} {on}; "
                           "add GPU nodes (an autoscaling cluster needs its GPU group's min_workers >= 1), or set "
                           "train.use_gpu=false / codes.backend=cpu")
    largest_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    if store_gpus > largest_gpus:
        raise ClusterError(f"codes.num_gpus={store_gpus}: the code-store actor needs {store_gpus} GPUs on one node, "
                           f"the largest node of the cluster has {largest_gpus:g}; lower codes.num_gpus")
    largest_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    if store_cpus > largest_cpus:
        raise ClusterError(f"codes.num_cpus={store_cpus}: the code-store actor needs {store_cpus} CPUs on one node, "
                           f"the largest node of the cluster has {largest_cpus:g}; lower codes.num_cpus")
    if config.cluster.placement_strategy == "STRICT_SPREAD" and workers > len(nodes):
        raise ClusterError(f"cluster.placement_strategy=STRICT_SPREAD puts each of the {workers} workers "
                           f"(train.num_workers) on its own node, the cluster has {len(nodes)}; use SPREAD or add nodes")
