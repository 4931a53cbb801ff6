"""The code store as a Ray actor: one per training run, named after the run and its owner.

`CodeStoreActor` serves the in-process `CodeStore` contract remotely. It is an async actor: every
call is a coroutine on one event loop, and all table work (writes, faiss searches, snapshots) runs
on one executor thread in arrival order, so the loop is never blocked (stats answer at once) and
an update sent before a query is applied before it.

Queries arriving within `batch_window_ms` of each other, from any number of workers, are
coalesced into one large search: search throughput grows with batch size.

The actor snapshots its table on its own schedule (`codes.snapshot_every_s`, into the run's
`codes/` folder, the newest two kept): cheaper and more frequent than model checkpoints. On
(re)start it restores the newest snapshot of the run (its own or a checkpoint's), so Ray's restart
after a crash loses at most one snapshot interval of code updates; how many steps of updates a
restore rewound is counted (`rewound_steps`) and reported in the run's metrics.

Its name carries the owner's token (`codes-<run_id>-<token>`): only the run's own driver, which
passes the handle to its workers, reaches it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from acn_dist.codes.factory import build_store
from acn_dist.codes.store import CodeStore, Neighbours
from acn_dist.config import CodesConfig
from acn_dist.errors import AcnError, StoreError
from acn_dist.runs.checkpoints import checkpoint_name
from acn_dist.runs.folder import RunFolder
from acn_dist.runs.storage import location, remove_tree

NAMESPACE = "acn_dist"
KEEP_SNAPSHOTS = 2


def actor_name(run_id: str, owner: str = "") -> str:
    return f"codes-{run_id}-{owner[:12]}" if owner else f"codes-{run_id}"


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
    def __init__(self, size: int, dim: int, codes_config: dict[str, Any], run_folder: str | None = None):
        config = CodesConfig(**codes_config)
        self.store: CodeStore = build_store(config, size, dim, threads=config.num_cpus)
        self.window = config.batch_window_ms / 1000
        self.snapshot_every = config.snapshot_every_s
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="code-store")
        self.pending: list[_Query] = []
        self.flusher: asyncio.Task | None = None
        self.snapshotter: asyncio.Task | None = None
        self.run = RunFolder(location(run_folder)) if run_folder else None
        self.restored_from: str | None = None
        self.restored_step: int | None = None  # set by a restore; the next update measures what it rewound
        self.rewound_steps = 0
        self.started = time.time()
        if self.run is not None:
            self._restore_newest()

    def _restore_newest(self) -> None:
        """Restore the newest code-table snapshot of the run (its own or a checkpoint's), if any."""
        snapshots = self.run.code_snapshots()
        if snapshots:
            _, newest = snapshots[-1]
            self.store.restore(newest)
            self.restored_from, self.restored_step = str(newest), self.store.step

    def _own_snapshot(self) -> None:
        """Snapshot the table into the run's `codes/` folder (executor thread: between table calls)."""
        if self.run is None or self.store.step <= self.store.snapshot_step:
            return
        self.store.snapshot(self.run.snapshots_dir / checkpoint_name(self.store.step))
        for _, old in [s for s in self.run.code_snapshots() if s[1].parent == self.run.snapshots_dir][:-KEEP_SNAPSHOTS]:
            remove_tree(old)

    async def _snapshot_on_schedule(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_every)
            await self._run(self._own_snapshot)

    def _after_restore(self, restored_step: int) -> None:
        """A rewind (to a checkpoint): own snapshots from after it no longer describe the run."""
        if self.run is not None:
            for step, folder in self.run.code_snapshots():
                if step > restored_step and folder.parent == self.run.snapshots_dir:
                    remove_tree(folder)

    async def _run(self, call: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call, *args)

    async def update(self, ids: np.ndarray, codes: np.ndarray, step: int | None = None) -> int:
        if self.snapshotter is None and self.snapshot_every > 0 and self.run is not None:
            self.snapshotter = asyncio.ensure_future(self._snapshot_on_schedule())
        if self.restored_step is not None and step is not None:  # the first write after a restart:
            self.rewound_steps += max(0, step - self.restored_step - 1)  # the steps between were lost
            self.restored_step = None
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
        """Rewind to a snapshot on purpose (training resumes from a checkpoint): not a loss."""
        await self._run(self.store.restore, path)
        self.restored_step = None
        await self._run(self._after_restore, self.store.step)

    async def table(self) -> np.ndarray:
        return await self._run(self.store.table)

    async def stats(self) -> dict[str, Any]:
        """The store's stats plus the actor's own. Each coalesced search is one store query, so
        `coalesced_searches` is the store's `queries` and `query_rows` the rows asked for."""
        stats = self.store.stats()
        return {**stats, "coalesced_searches": stats["queries"], "restored_from": self.restored_from,
                "rewound_steps": self.rewound_steps, "uptime_s": time.time() - self.started}

    async def ping(self) -> bool:
        return True


def create_store_actor(run_id: str, owner: str, size: int, dim: int, codes_config: dict[str, Any],
                       run_folder: str | None = None, max_restarts: int = -1) -> Any:
    """The run's code-store actor, named for the run and its owner. Ray restarts it after a crash
    (max_restarts) and retries calls in flight (max_task_retries); on (re)start it restores the
    newest snapshot of the run in `run_folder`. A refusal while it starts (a damaged snapshot)
    is raised here as the store's own error."""
    num_cpus = codes_config.get("num_cpus", 1)
    num_gpus = codes_config.get("num_gpus", 0) if codes_config.get("backend") == "gpu" else 0
    remote = ray.remote(CodeStoreActor).options(
        name=actor_name(run_id, owner), namespace=NAMESPACE,
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=-1,
        max_concurrency=1000,
    )
    actor = remote.remote(size, dim, codes_config, run_folder)
    try:
        ray.get(actor.ping.remote())
    except ray.exceptions.RayActorError as error:
        cause = getattr(error, "cause", None) or error.__cause__
        if isinstance(cause, ray.exceptions.RayTaskError):
            cause = cause.cause
        if isinstance(cause, AcnError):
            raise type(cause)(*cause.args) from None
        raise StoreError(f"the code-store actor of run {run_id!r} could not start: {error}") from None
    return actor


def get_store_actor(run_id: str, owner: str = "") -> Any:
    return ray.get_actor(actor_name(run_id, owner), namespace=NAMESPACE)
