"""Exact and approximate k-NN search over the code table, behind one small interface.

A backend owns the N x D float32 table: `write(rows, codes)` replaces rows in place (rows are
unique: the store resolves repeated ids before writing),
`search(queries, k)` returns squared Euclidean distances and row ids of the k nearest rows
(`[Q, k]` each, nearest first), `rows(ids)` a copy of some rows, `table()` a copy of all.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Protocol

import numpy as np

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not one line per Ray worker at import
import faiss  # noqa: E402


class SearchBackend(Protocol):
    size: int
    dim: int

    def write(self, rows: np.ndarray, codes: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def rows(self, ids: np.ndarray) -> np.ndarray: ...

    def table(self) -> np.ndarray: ...


def configure_faiss(threads: int | None, blas_threshold: int) -> None:
    """faiss picks its BLAS path only when nq*d >= the threshold (default 128000 in faiss 1.15);
    the non-BLAS path is 6-8x slower here, so the threshold is set on purpose.

    `threads` sets OpenMP's thread count, which faiss shares with torch in the same process
    (`omp_set_num_threads(1)` there makes torch's training step single-threaded): only a store in
    its own process (the Ray actor) sets it; None leaves the process's setting as it is."""
    if threads is not None:
        faiss.omp_set_num_threads(max(1, threads))
    faiss.cvar.distance_compute_blas_threshold = blas_threshold


class CPUExact:
    """Brute force on a host numpy table with faiss (BLAS GEMM path): exact results."""

    def __init__(self, table: np.ndarray, threads: int | None = None, blas_threshold: int = 20):
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self.size, self.dim = self._table.shape
        configure_faiss(threads, blas_threshold)

    def write(self, rows: np.ndarray, codes: np.ndarray) -> None:
        self._table[rows] = codes

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), self._table, k)
        return distances, ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self._table[ids]

    def table(self) -> np.ndarray:
        return self._table.copy()


def recall_at_k(exact_ids: np.ndarray, approximate_ids: np.ndarray) -> float:
    """Mean fraction of each query's exact K nearest ids that the approximate search also found."""
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact_ids, approximate_ids)]))


def merge_top_k(distances: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists ([Q, k] each, shard-local ids already made global)."""
    all_distances, all_ids = np.concatenate(distances, axis=1), np.concatenate(ids, axis=1)
    order = np.argsort(all_distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_distances, order, axis=1), np.take_along_axis(all_ids, order, axis=1)


class ShardedExact:
    """Brute force over row blocks of the table, one block per device, top-k merged.

    On CUDA devices each block is a torch tensor (fp32 or fp16) searched with `faiss.knn_gpu`
    when faiss has GPU support (faiss-gpu), else with a torch GEMM + top-k; one thread per device
    (GPU faiss is not thread-safe). On "cpu" devices the same code runs on host tensors, which is
    how the sharding and the merge are tested on machines without a GPU.
    """

    def __init__(self, table: np.ndarray, devices: list[str], fp16: bool = False):
        import torch

        if not devices:
            raise ValueError("ShardedExact needs at least one device")
        self.size, self.dim = table.shape
        self.devices = [torch.device(d) for d in devices]
        dtype = torch.float16 if fp16 and all(d.type == "cuda" for d in self.devices) else torch.float32
        bounds = np.linspace(0, self.size, len(devices) + 1).astype(np.int64)
        self.starts = bounds[:-1]
        self.blocks = [torch.as_tensor(table[lo:hi], dtype=dtype, device=device).contiguous()
                       for lo, hi, device in zip(bounds[:-1], bounds[1:], self.devices)]
        self._gpu_resources: dict[int, object] = {}
        self._faiss_gpu = hasattr(faiss, "StandardGpuResources")
        if self._faiss_gpu:
            importlib.import_module("faiss.contrib.torch_utils")  # faiss.knn_gpu on torch tensors
        from concurrent.futures import ThreadPoolExecutor

        self._threads = [ThreadPoolExecutor(max_workers=1) for _ in self.devices]

    def _shard_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1

    def write(self, rows: np.ndarray, codes: np.ndarray) -> None:
        import torch

        shard = self._shard_of(rows)
        for index, block in enumerate(self.blocks):
            mask = shard == index
            if mask.any():
                local = torch.as_tensor(rows[mask] - self.starts[index], device=block.device)
                block[local] = torch.as_tensor(codes[mask], device=block.device, dtype=block.dtype)

    def _search_block(self, index: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        block = self.blocks[index]
        k = min(k, len(block))
        q = torch.as_tensor(queries, device=block.device, dtype=block.dtype)
        if block.device.type == "cuda" and self._faiss_gpu:
            resources = self._gpu_resources.setdefault(index, faiss.StandardGpuResources())
            distances, ids = faiss.knn_gpu(resources, q, block, k, device=block.device.index or 0)
        else:
            distances = ((q.float() ** 2).sum(1, keepdim=True) - 2 * q.float() @ block.float().T
                         + (block.float() ** 2).sum(1)[None, :]).clamp_min_(0)
            distances, ids = torch.topk(distances, k, dim=1, largest=False)
        return distances.float().cpu().numpy(), ids.cpu().numpy().astype(np.int64) + self.starts[index]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        futures = [pool.submit(self._search_block, i, queries, k) for i, pool in enumerate(self._threads)]
        parts = [future.result() for future in futures]
        return merge_top_k([p[0] for p in parts], [p[1] for p in parts], k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        shard = self._shard_of(ids)
        for index, block in enumerate(self.blocks):
            mask = shard == index
            if mask.any():
                local = ids[mask] - self.starts[index]
                out[mask] = block[local].float().cpu().numpy()
        return out

    def table(self) -> np.ndarray:
        return np.concatenate([block.float().cpu().numpy() for block in self.blocks])


class IVFApproximate:
    """Approximate search for tables too large for brute force at the needed rate.

    An `IndexIVFFlat` trained on the current table. Row i is vector i of the index (added in
    order), so an array direct map (8 bytes a row) finds each row's list, and `write` moves the
    written rows in place (`update_vectors`: each row is re-assigned to its nearest centroid, so
    the lists are always exact for the current codes). Codes drift while training, and the
    centroids were fitted to older codes (at first: the N(0, 1) initial table), so lists become
    unbalanced and searches slow down (a 1M table built on the initial codes and then filled with
    a trained model's codes: lists 80x unbalanced, searches 9x slower): the coarse quantiser is
    retrained from the current table (k-means on `train_per_list` rows per list, all rows re-added)
    after `rebuild_every` written rows, and sooner when the lists' imbalance factor (faiss: N *
    sum(n_i^2) / (sum n_i)^2, 1 = balanced) exceeds `rebuild_imbalance` once at least 1% of the
    table was written since the last build.
    """

    def __init__(self, table: np.ndarray, lists: int = 4096, probe: int = 8, rebuild_every: int = 20000,
                 threads: int | None = None, seed: int = 0, train_per_list: int = 64, rebuild_imbalance: float = 4.0,
                 blas_threshold: int = 20):
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self.size, self.dim = self._table.shape
        self.lists = max(1, min(lists, self.size // 39))  # faiss wants >= 39 training points per list
        self.probe, self.rebuild_every, self.seed = probe, rebuild_every, seed
        self.train_per_list = max(39, train_per_list)
        self.rebuild_imbalance = rebuild_imbalance  # 0 = rebuild only every `rebuild_every` rows
        self.rebuilds = 0
        self.rebuild_seconds = 0.0  # of the last (re)build
        self._written_since_build = 0
        configure_faiss(threads, blas_threshold)  # the coarse assignment of a batch is 10x faster on BLAS
        self.rebuild()

    @property
    def index(self) -> faiss.IndexIVFFlat:
        return self._index

    def set_probe(self, probe: int) -> None:
        self.probe = self._index.nprobe = max(1, probe)

    def rebuild(self) -> None:
        """Retrain the coarse quantiser on (a sample of) the current table and re-add every row."""
        start = time.perf_counter()
        quantizer = faiss.IndexFlatL2(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.lists)
        index.cp.seed = self.seed + self.rebuilds
        sample = self._table
        if len(sample) > self.train_per_list * self.lists:
            picks = np.random.default_rng(self.seed + self.rebuilds).choice(
                len(sample), self.train_per_list * self.lists, replace=False)
            sample = sample[picks]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Array)  # ids are the rows 0..N-1, added in order
        index.add(self._table)
        index.nprobe = self.probe
        self._index, self._quantizer = index, quantizer
        self.rebuilds += 1
        self._written_since_build = 0
        self.rebuild_seconds = time.perf_counter() - start

    def write(self, rows: np.ndarray, codes: np.ndarray) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        self._table[rows] = codes
        self._written_since_build += len(rows)
        if self._written_since_build >= self.rebuild_every:
            self.rebuild()
            return
        self._index.update_vectors(rows.astype(np.int64), codes)
        if (self.rebuild_imbalance > 0 and self._written_since_build >= self.size // 100
                and self.imbalance() > self.rebuild_imbalance):
            self.rebuild()

    def imbalance(self) -> float:
        """faiss's imbalance factor of the inverted lists (1 = balanced)."""
        return float(self._index.invlists.imbalance_factor())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        missing = ids < 0  # too few hits in the probed lists: pad with the farthest possible
        if missing.any():
            ids[missing], distances[missing] = 0, np.inf
        return distances, ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self._table[ids]

    def table(self) -> np.ndarray:
        return self._table.copy()
