"""The code store as a Ray actor: one per training run, named after the run.

`CodeStoreActor` serves the in-process `CodeStore` contract remotely. It is an async actor: every
call is a coroutine on one event loop, and all table work (writes, faiss searches, snapshots) runs
on one executor thread in arrival order, so the loop is never blocked (stats answer at once) and
an update sent before a query is applied before it.

Queries arriving within `batch_window_ms` of each other, from any number of workers, are
coalesced into one large search: search throughput grows with batch size.

On (re)start the actor restores the latest snapshot found in `restore_from` (the run's
checkpoints), so Ray's actor restart after a crash brings the table back to the last checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from acn_dist.codes.factory import build_store
from acn_dist.codes.store import CodeStore, Neighbours
from acn_dist.config import CodesConfig
from acn_dist.runs.folder import RunFolder

NAMESPACE = "acn_dist"


def actor_name(run_id: str) -> str:
    return f"codes-{run_id}"


@dataclass
class _Query:
    ids: np.ndarray
    codes: np.ndarray | None
    k: int | None
    exclude_batch: bool
    done: asyncio.Future


def split_neighbours(found: Neighbours, sizes: list[int]) -> list[Neighbours]:
    """Cut the result of one coalesced search back into the callers' pieces."""
    cuts = np.cumsum([0, *sizes])
    return [Neighbours(found.ids[a:b], found.distances[a:b], found.neighbour_ids[a:b],
                       found.neighbour_codes[a:b], found.staleness[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


class CodeStoreActor:
    def __init__(self, size: int, dim: int, codes_config: dict[str, Any], restore_from: str | None = None):
        config = CodesConfig(**codes_config)
        self.store: CodeStore = build_store(config, size, dim)
        self.window = config.batch_window_ms / 1000
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="code-store")
        self.pending: list[_Query] = []
        self.flusher: asyncio.Task | None = None
        self.restored_from: str | None = None
        self.started = time.time()
        if restore_from:
            self.restored_from = self._restore_latest(restore_from)

    def _restore_latest(self, run_folder: str) -> str | None:
        """Restore the newest code-table snapshot of the run, if it has one."""
        snapshots = RunFolder(Path(run_folder)).code_snapshots()
        if not snapshots:
            return None
        _, newest = snapshots[-1]
        self.store.restore(newest)
        return str(newest)

    async def _run(self, call: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call, *args)

    async def update(self, ids: np.ndarray, codes: np.ndarray, step: int | None = None) -> int:
        return await self._run(self.store.update, ids, codes, step)

    async def neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None, k: int | None = None,
                         exclude_batch: bool = False) -> Neighbours:
        ids = self.store.check_ids(ids)  # refuse a bad call alone, never the batch it joins
        if codes is not None:
            codes = self.store.check_codes(codes, len(ids))
        query = _Query(ids, codes, k, exclude_batch, asyncio.get_running_loop().create_future())
        self.pending.append(query)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush_after_window())
        return await query.done

    async def _flush_after_window(self) -> None:
        """Search everything pending, in windows, until nothing is pending. (The loop matters:
        queries arriving during a search join the next window; the check and the task's end happen
        without yielding, so no query is ever left waiting.)"""
        while self.pending:
            if self.window > 0:
                await asyncio.sleep(self.window)
            batch, self.pending = self.pending, []
            groups: dict[int | None, list[_Query]] = {}
            for query in batch:
                groups.setdefault(query.k, []).append(query)
            for k, queries in groups.items():
                try:
                    results = await self._run(self._search_group, queries, k)
                    for query, result in zip(queries, results):
                        query.done.set_result(result)
                except Exception as error:  # every caller of the group gets the error
                    for query in queries:
                        if not query.done.done():
                            query.done.set_exception(error)

    def _search_group(self, queries: list[_Query], k: int | None) -> list[Neighbours]:
        """One search for the queries of several callers; each caller's request is its own batch."""
        if len(queries) == 1:
            query = queries[0]
            return [self.store.neighbours(query.ids, query.codes, k, exclude_batch=query.exclude_batch)]
        ids = np.concatenate([q.ids for q in queries])
        codes = np.concatenate([q.codes if q.codes is not None else self.store.rows(q.ids) for q in queries])
        batches = np.concatenate([np.full(len(q.ids), index if q.exclude_batch else -1)
                                  for index, q in enumerate(queries)])
        found = self.store.neighbours(ids, codes, k, batches=batches)
        return split_neighbours(found, [len(q.ids) for q in queries])

    async def snapshot(self, path: str) -> str:
        return str(await self._run(self.store.snapshot, path))

    async def restore(self, path: str) -> None:
        await self._run(self.store.restore, path)

    async def table(self) -> np.ndarray:
        return await self._run(self.store.table)

    async def stats(self) -> dict[str, Any]:
        """The store's stats plus the actor's own. Each coalesced search is one store query, so
        `coalesced_searches` is the store's `queries` and `query_rows` the rows asked for."""
        stats = self.store.stats()
        return {**stats, "coalesced_searches": stats["queries"],
                "restored_from": self.restored_from, "uptime_s": time.time() - self.started}

    async def ping(self) -> bool:
        return True


def create_store_actor(run_id: str, size: int, dim: int, codes_config: dict[str, Any],
                       restore_from: str | None = None, max_restarts: int = -1) -> Any:
    """The run's code-store actor (created, or the live one of this run). Ray restarts it after a
    crash (max_restarts) and retries calls in flight (max_task_retries); on restart it restores
    the latest snapshot under `restore_from`."""
    num_cpus = codes_config.get("num_cpus", 1)
    num_gpus = codes_config.get("num_gpus", 0) if codes_config.get("backend") == "gpu" else 0
    remote = ray.remote(CodeStoreActor).options(
        name=actor_name(run_id), namespace=NAMESPACE, get_if_exists=True,
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=-1,
        max_concurrency=1000,
    )
    actor = remote.remote(size, dim, codes_config, restore_from)
    ray.get(actor.ping.remote())
    return actor


def get_store_actor(run_id: str) -> Any:
    return ray.get_actor(actor_name(run_id), namespace=NAMESPACE)
