"""Exact and approximate k-NN search over the code table, behind one small interface.

A backend owns the N x D float32 table: `write(rows, codes)` replaces rows in place,
`search(queries, k)` returns squared Euclidean distances and row ids of the k nearest rows
(`[Q, k]` each, nearest first), `rows(ids)` a copy of some rows, `table()` a copy of all.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np


class SearchBackend(Protocol):
    size: int
    dim: int

    def write(self, rows: np.ndarray, codes: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def rows(self, ids: np.ndarray) -> np.ndarray: ...

    def table(self) -> np.ndarray: ...


def configure_faiss(threads: int, blas_threshold: int) -> None:
    """faiss picks its BLAS path only when nq*d >= the threshold (default 128000 in faiss 1.15);
    the non-BLAS path is 6-8x slower here, so the threshold is set on purpose."""
    faiss.omp_set_num_threads(max(1, threads))
    faiss.cvar.distance_compute_blas_threshold = blas_threshold


class CPUExact:
    """Brute force on a host numpy table with faiss (BLAS GEMM path): exact results."""

    def __init__(self, table: np.ndarray, threads: int = 1, blas_threshold: int = 20):
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
