"""Build a code store from the `codes` config section."""

from __future__ import annotations

from acn_dist.codes.search import CPUExact
from acn_dist.codes.store import CodeStore, StoreError, initial_table
from acn_dist.config import CodesConfig


def build_store(config: CodesConfig, size: int, dim: int) -> CodeStore:
    """A store of `size` rows of `dim`, initialised c ~ N(0, 1), with the configured backend."""
    if not 1 <= config.k < size:
        raise StoreError(f"codes.k={config.k} must be in 1..{size - 1}: the train split has {size} data")
    table = initial_table(size, dim, config.seed)
    if config.backend == "cpu":
        backend = CPUExact(table, threads=config.num_cpus, blas_threshold=config.blas_threshold)
    else:
        raise StoreError(f"codes.backend={config.backend} is not available yet")
    return CodeStore(size, dim, k=config.k, seed=config.seed, backend=backend,
                     unique_neighbours=config.unique_neighbours)
