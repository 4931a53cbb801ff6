"""Build a code store from the `codes` config section."""

from __future__ import annotations

from acn_dist.codes.search import CPUExact, IVFApproximate, SearchBackend, ShardedExact
from acn_dist.codes.store import CodeStore, StoreError, initial_table
from acn_dist.config import CodesConfig


def visible_gpus() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def build_backend(config: CodesConfig, size: int, dim: int, threads: int | None = None) -> SearchBackend:
    table = initial_table(size, dim, config.seed)
    if config.backend == "cpu":
        return CPUExact(table, threads=threads, blas_threshold=config.blas_threshold)
    if config.backend == "ivf":
        return IVFApproximate(table, lists=config.ivf_lists, probe=config.ivf_probe,
                              rebuild_every=config.ivf_rebuild_every or size, threads=threads, seed=config.seed,
                              rebuild_imbalance=config.ivf_rebuild_imbalance, blas_threshold=config.blas_threshold)
    gpus = visible_gpus()
    if not gpus:
        raise StoreError("codes.backend=gpu but no CUDA device is visible to the code store: give it "
                         "GPUs (codes.num_gpus) on a GPU node, or use codes.backend=cpu")
    return ShardedExact(table, gpus, fp16=config.fp16)


def build_store(config: CodesConfig, size: int, dim: int, threads: int | None = None) -> CodeStore:
    """A store of `size` rows of `dim`, initialised c ~ N(0, 1), with the configured backend.
    `threads`: faiss's (OpenMP's) thread count, for a store in its own process; None in a process
    that also trains, whose torch shares the setting."""
    if not 1 <= config.k < size:
        raise StoreError(f"codes.k={config.k} must be in 1..{size - 1}: the train split has {size} data")
    return CodeStore(size, dim, k=config.k, seed=config.seed, backend=build_backend(config, size, dim, threads),
                     unique_neighbours=config.unique_neighbours)
