"""The code store: the latest code of every training datum, and K-nearest-neighbour lookups.

This is the in-process backend of the contract that the Ray actor (`acn_dist.codes.actor`) serves
remotely, so local training and distributed training share one implementation:

- `update(ids, codes, step)`: write rows (row i = the datum with global train id i);
- `neighbours(ids, codes=None, k=None, exclude_batch=False)`: for each query, its K nearest stored
  codes by Euclidean distance, **excluding the query's own id** (and with `exclude_batch` every id
  of the call), and one neighbour code per query drawn uniformly among the K (seeded). With
  `codes=None` the stored codes of `ids` are the queries (prefetch);
- `snapshot(path)` / `restore(path)`: the table, step counters and RNG, written atomically;
- `stats()`: counts, latencies, staleness.

Every call is validated before anything changes: a bad call raises `StoreError` and the table
stays as it was.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from acn_dist.codes.search import CPUExact, SearchBackend
from acn_dist.errors import StoreError
from acn_dist.runs.storage import AnyPath, ObjectPath, atomic_folder, location

SNAPSHOT_FORMAT = "acn_dist.codes/1"

__all__ = ["CodeStore", "Neighbours", "StoreError", "initial_table"]


@dataclass
class Neighbours:
    """Result of `neighbours` for Q queries."""

    ids: np.ndarray  # int64 [Q, K]: neighbour ids, nearest first, never the query's own id
    distances: np.ndarray  # float32 [Q, K]: squared Euclidean distances
    neighbour_ids: np.ndarray  # int64 [Q]: the one neighbour picked uniformly among the K
    neighbour_codes: np.ndarray  # float32 [Q, D]: its stored code, ĉ
    staleness: np.ndarray  # int64 [Q]: steps since the picked code was written


def initial_table(size: int, dim: int, seed: int) -> np.ndarray:
    """c(x) ~ N(0, 1) for every training datum (Algorithm 1, step 1)."""
    return np.random.default_rng(seed).standard_normal((size, dim), dtype=np.float32)


def allowed(ids: np.ndarray, found: np.ndarray, batches: np.ndarray | None) -> np.ndarray:
    """[Q, C] mask of the candidates a query may take: not itself, not padding, and (with
    `batches`) not an id of its own batch."""
    keep = (found != ids[:, None]) & (found >= 0)
    if batches is not None:
        for label in np.unique(batches[batches >= 0]):
            rows = batches == label
            keep[rows] &= ~np.isin(found[rows], ids[rows])
    return keep


def same_batch_share(ids: np.ndarray, neighbour_ids: np.ndarray, batches: np.ndarray | None) -> float:
    """Fraction of the returned neighbours that are ids of the query's own batch (the whole call
    when `batches` is None): how much a batch's fresh codes crowd its own search."""
    labels = np.zeros(len(ids), dtype=np.int64) if batches is None else batches
    shared = sum(int(np.isin(neighbour_ids[labels == label], ids[labels == label]).sum())
                 for label in np.unique(labels))
    return shared / max(neighbour_ids.size, 1)


def last_write_per_id(ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resolve repeated ids in one call: the last occurrence wins."""
    if len(np.unique(ids)) == len(ids):
        return ids, codes
    unique, last_from_end = np.unique(ids[::-1], return_index=True)
    return unique, codes[len(ids) - 1 - last_from_end]


def load_array(path: AnyPath) -> np.ndarray:
    """A `.npy` file, local or in object storage (read whole); never a pickle."""
    source = io.BytesIO(path.read_bytes()) if isinstance(path, ObjectPath) else path
    return np.load(source, allow_pickle=False)


class CodeStore:
    def __init__(self, size: int, dim: int, k: int = 5, seed: int = 0,
                 backend: SearchBackend | None = None, unique_neighbours: bool = False):
        if size < 2 or dim < 1:
            raise StoreError(f"a code table needs size >= 2 and dim >= 1, got {size} x {dim}")
        if not 1 <= k < size:
            raise StoreError(f"k={k} must be in 1..{size - 1} (the table has {size} rows, self excluded)")
        self.size, self.dim, self.k = size, dim, k
        self.backend = backend if backend is not None else CPUExact(initial_table(size, dim, seed))
        self.rng = np.random.default_rng(seed + 1)
        self.unique_neighbours = unique_neighbours
        self.used = np.zeros(size, dtype=bool)  # unique-neighbour constraint: served this pass
        self.used_count = 0
        self.row_step = np.full(size, -1, dtype=np.int64)  # step of each row's last write; -1 = initial
        self.written = np.zeros(size, dtype=bool)
        self.step = 0
        self.snapshot_step = -1  # the store step of the last snapshot written or restored
        self.counters = {"updates": 0, "rows_written": 0, "queries": 0, "query_rows": 0,
                         "unique_fallbacks": 0, "passes": 0}
        self.latency = {"update": deque(maxlen=2000), "neighbours": deque(maxlen=2000)}
        self.batch_sizes: deque[int] = deque(maxlen=2000)
        self.staleness: deque[float] = deque(maxlen=2000)
        self.same_batch: deque[float] = deque(maxlen=2000)

    # --- validation ---------------------------------------------------------------------------

    def check_ids(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise StoreError(f"ids must be a 1-d integer array, got {ids.dtype}{ids.shape}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.size):
            bad = ids[(ids < 0) | (ids >= self.size)][0]
            raise StoreError(f"id {bad} is outside the table's rows 0..{self.size - 1} (train ids only)")
        return ids.astype(np.int64)

    def check_codes(self, codes: Any, count: int) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype not in (np.float32, np.float64, np.float16):
            raise StoreError(f"codes must be floating point, got {codes.dtype}")
        if codes.shape != (count, self.dim):
            raise StoreError(f"codes must have shape ({count}, {self.dim}), got {codes.shape}")
        if not np.isfinite(codes).all():
            row = int(np.flatnonzero(~np.isfinite(codes).all(axis=1))[0])
            raise StoreError(f"codes row {row} is not finite (NaN or Inf); nothing was written")
        return np.ascontiguousarray(codes, dtype=np.float32)

    # --- the contract -------------------------------------------------------------------------

    def update(self, ids: Any, codes: Any, step: int | None = None) -> int:
        """Write `codes[i]` into row `ids[i]`; returns the number of rows written.

        With repeated ids in one call, the last occurrence wins.
        """
        start = time.perf_counter()
        ids = self.check_ids(ids)
        codes = self.check_codes(codes, len(ids))
        self.step = max(self.step, step) if step is not None else self.step + 1
        ids, codes = last_write_per_id(ids, codes)
        self.backend.write(ids, codes)
        self.row_step[ids] = self.step
        self.written[ids] = True
        self.counters["updates"] += 1
        self.counters["rows_written"] += len(ids)
        self.latency["update"].append(time.perf_counter() - start)
        return len(ids)

    def neighbours(self, ids: Any, codes: Any = None, k: int | None = None, exclude_batch: bool = False,
                   batches: np.ndarray | None = None) -> Neighbours:
        """K nearest stored codes of each query, self excluded; one of them picked uniformly.

        `exclude_batch` also excludes every id of this call. `batches` (int [Q], for a caller that
        joins several requests into one search) labels each query's request instead: queries
        with the same label >= 0 exclude each other's ids; label -1 excludes only its own id."""
        start = time.perf_counter()
        ids = self.check_ids(ids)
        k = self.k if k is None else int(k)
        if not 1 <= k < self.size:
            raise StoreError(f"k={k} must be in 1..{self.size - 1}")
        queries = self.backend.rows(ids) if codes is None else self.check_codes(codes, len(ids))
        if batches is None and exclude_batch:
            batches = np.zeros(len(ids), dtype=np.int64)
        spare = 3 * k if self.unique_neighbours else 0  # candidates beyond K for the unique pick
        result_ids, result_distances = self.nearest(ids, queries, min(k + spare, self.size - 1), batches)
        if self.unique_neighbours:
            pick = self._pick_unique(result_ids, k)
        else:
            pick = self.rng.integers(0, k, size=len(ids))
        result_ids, result_distances = result_ids[:, :k], result_distances[:, :k]
        neighbour_ids = np.take_along_axis(result_ids, pick[:, None], axis=1)[:, 0]
        neighbour_codes = self.backend.rows(neighbour_ids)
        staleness = np.where(self.row_step[neighbour_ids] >= 0, self.step - self.row_step[neighbour_ids], self.step)
        self.counters["queries"] += 1
        self.counters["query_rows"] += len(ids)
        self.batch_sizes.append(len(ids))
        if len(ids):
            self.staleness.append(float(staleness.mean()))
            self.same_batch.append(same_batch_share(ids, result_ids, batches))
        self.latency["neighbours"].append(time.perf_counter() - start)
        return Neighbours(result_ids, result_distances.astype(np.float32), neighbour_ids,
                          neighbour_codes.astype(np.float32), staleness)

    def nearest(self, ids: np.ndarray, queries: np.ndarray, want: int,
                batches: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `want` nearest rows of each query ([Q, want] ids and squared distances, nearest
        first), never the query's own id nor, with `batches`, an id of its own batch."""
        batch_size = int(np.bincount(batches[batches >= 0]).max()) if batches is not None and (batches >= 0).any() else 0
        depth = min(want + 1 + min(batch_size, 2 * want), self.size)  # room for what is excluded
        distances, found = self.backend.search(queries, depth)
        keep = allowed(ids, found, batches)
        short = np.flatnonzero(keep.sum(axis=1) < want)
        if len(short) and depth < self.size:  # the batch crowded these queries: search deeper
            deeper = min(want + 1 + batch_size, self.size)
            more_distances, more_found = self.backend.search(queries[short], deeper)
            found = np.pad(found, ((0, 0), (0, deeper - depth)), constant_values=-1)
            distances = np.pad(distances, ((0, 0), (0, deeper - depth)), constant_values=np.inf)
            found[short], distances[short] = more_found, more_distances
            keep = allowed(ids, found, batches)
        if (keep.sum(axis=1) < want).any():
            raise StoreError(f"fewer than {want} neighbours are left for a query once its batch is excluded "
                             f"(table of {self.size}); lower codes.k or set codes.exclude_batch=false")
        order = np.argsort(~keep, axis=1, kind="stable")[:, :want]  # the kept columns, nearest first
        return (np.take_along_axis(found, order, axis=1).astype(np.int64),
                np.take_along_axis(distances, order, axis=1))

    def _pick_unique(self, candidates: np.ndarray, k: int) -> np.ndarray:
        """Pick uniformly among the first K candidates not yet used this pass; mark the pick used.

        When all candidates are used, fall back to a uniform pick among the K nearest (counted).
        """
        picks = np.empty(len(candidates), dtype=np.int64)
        for row, ids in enumerate(candidates):
            if self.used_count >= self.size - 1:
                self.new_pass()
            free = np.flatnonzero(~self.used[ids])[:k]
            if len(free) == 0:
                self.counters["unique_fallbacks"] += 1
                picks[row] = self.rng.integers(0, k)
            else:
                picks[row] = free[self.rng.integers(0, len(free))]
            if not self.used[ids[picks[row]]]:
                self.used[ids[picks[row]]] = True
                self.used_count += 1
        # Candidates beyond K may be picked here: move each pick into the first K columns.
        for row, column in enumerate(picks):
            if column >= k:
                candidates[row, [k - 1, column]] = candidates[row, [column, k - 1]]
                picks[row] = k - 1
        return picks

    def new_pass(self) -> None:
        """Start a new pass for the unique-neighbour constraint."""
        self.used[:] = False
        self.used_count = 0
        self.counters["passes"] += 1

    def table(self) -> np.ndarray:
        return self.backend.table()

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The stored codes of `ids` (checked): [len(ids), D]."""
        return self.backend.rows(self.check_ids(ids))

    # --- persistence --------------------------------------------------------------------------

    def snapshot(self, path: str | AnyPath) -> AnyPath:
        """Write the table, row steps and RNG to folder `path` (local or object storage, see
        `acn_dist.runs.storage`) atomically; returns the folder."""
        with atomic_folder(path) as scratch:
            np.save(scratch / "table.npy", self.backend.table())
            np.save(scratch / "row_step.npy", self.row_step)
            np.save(scratch / "used.npy", self.used)
            header = {
                "format": SNAPSHOT_FORMAT, "size": self.size, "dim": self.dim, "k": self.k,
                "step": self.step, "counters": self.counters,
                "rng": self.rng.bit_generator.state,
            }
            (scratch / "header.json").write_text(json.dumps(header))
        self.snapshot_step = self.step
        return location(path)

    def restore(self, path: str | AnyPath) -> None:
        """Load a snapshot written by `snapshot`; refuses one of another shape."""
        path = location(path)
        header_path = path / "header.json"
        if not header_path.is_file():
            raise StoreError(f"{path} is not a code-store snapshot (no header.json)")
        header = json.loads(header_path.read_text())
        if header.get("format") != SNAPSHOT_FORMAT:
            raise StoreError(f"{header_path}: format {header.get('format')!r} is not {SNAPSHOT_FORMAT!r}")
        if (header["size"], header["dim"]) != (self.size, self.dim):
            raise StoreError(
                f"{path}: snapshot is {header['size']} x {header['dim']}, this store is "
                f"{self.size} x {self.dim}; it belongs to another dataset or code size"
            )
        table = load_array(path / "table.npy")
        if table.shape != (self.size, self.dim) or not np.isfinite(table).all():
            raise StoreError(f"{path / 'table.npy'}: damaged (shape {table.shape} or non-finite values)")
        self.backend.write(np.arange(self.size), table)
        self.row_step = load_array(path / "row_step.npy")
        self.used = load_array(path / "used.npy")
        self.used_count = int(self.used.sum())
        self.written = self.row_step >= 0
        self.step = self.snapshot_step = int(header["step"])
        self.counters.update(header["counters"])
        self.rng.bit_generator.state = header["rng"]

    # --- observability ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        def percentiles(values: deque) -> dict[str, float]:
            if not values:
                return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0}
            array = np.asarray(values) * 1000
            return {f"p{q}_ms": float(np.percentile(array, q)) for q in (50, 90, 99)}

        return {
            "size": self.size, "dim": self.dim, "k": self.k, "step": self.step,
            **self.counters,
            "rows_ever_written": int(self.written.sum()),
            "update_latency": percentiles(self.latency["update"]),
            "neighbours_latency": percentiles(self.latency["neighbours"]),
            "mean_query_batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
            "mean_staleness": float(np.mean(self.staleness)) if self.staleness else 0.0,
            "same_batch_share": float(np.mean(self.same_batch)) if self.same_batch else 0.0,
        }
