"""The worker-side view of the code store.

Training talks to the store only through a client: `update` (fire-and-forget where the store is
remote), `request_neighbours` (returns a pending result; `.result()` waits) and the persistence
calls. `LocalClient` wraps an in-process `CodeStore`; `RayClient` the run's store actor. Both
count the seconds the training step spent waiting on the store.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from acn_dist.codes.store import CodeStore, Neighbours
from acn_dist.errors import AcnError
from acn_dist.runs.storage import absolute


class PendingNeighbours(Protocol):
    def result(self) -> Neighbours: ...


class StoreClient(Protocol):
    wait_seconds: float

    def update(self, ids: np.ndarray, codes: np.ndarray, step: int) -> None: ...

    def request_neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None,
                           exclude_batch: bool = False) -> PendingNeighbours: ...

    def flush(self) -> None: ...

    def snapshot(self, path: str) -> Any: ...

    def restore(self, path: str) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class _Done:
    def __init__(self, value: Neighbours):
        self.value = value

    def result(self) -> Neighbours:
        return self.value


class LocalClient:
    """In-process store: every call completes before it returns (its time counts as waiting)."""

    def __init__(self, store: CodeStore):
        self.store = store
        self.wait_seconds = 0.0

    def _timed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.wait_seconds += time.perf_counter() - start

    def update(self, ids: np.ndarray, codes: np.ndarray, step: int) -> None:
        self._timed(self.store.update, ids, codes, step)

    def request_neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None,
                           exclude_batch: bool = False) -> PendingNeighbours:
        return _Done(self._timed(self.store.neighbours, ids, codes, exclude_batch=exclude_batch))

    def flush(self) -> None:
        pass

    def snapshot(self, path: str) -> Any:
        return self.store.snapshot(path)

    def restore(self, path: str) -> None:
        self.store.restore(path)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


class _PendingRef:
    def __init__(self, client: RayClient, ref: Any):
        self.client, self.ref = client, ref

    def result(self) -> Neighbours:
        return self.client.wait(self.ref)


class RayClient:
    """The worker's handle on the store actor: fire-and-forget updates (at most
    `max_updates_in_flight` outstanding), neighbour requests as futures, and the seconds the
    training step spent waiting on either. A refusal by the store reaches the caller as the
    store's own error (a `StoreError`, one line), not as Ray's wrapper."""

    def __init__(self, actor: Any, max_updates_in_flight: int = 4):
        self.actor = actor
        self.max_in_flight = max_updates_in_flight
        self.in_flight: list[Any] = []
        self.wait_seconds = 0.0

    def wait(self, ref: Any) -> Any:
        import ray

        start = time.perf_counter()
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = error.as_instanceof_cause()
            raise (cause if isinstance(cause, AcnError) else error) from None
        finally:
            self.wait_seconds += time.perf_counter() - start

    def update(self, ids: np.ndarray, codes: np.ndarray, step: int) -> None:
        self.in_flight.append(self.actor.update.remote(ids, codes, step))
        while len(self.in_flight) > self.max_in_flight:
            self.wait(self.in_flight.pop(0))  # also surfaces a refused update

    def request_neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None,
                           exclude_batch: bool = False) -> _PendingRef:
        return _PendingRef(self, self.actor.neighbours.remote(ids, codes, None, exclude_batch))

    def flush(self) -> None:
        while self.in_flight:
            self.wait(self.in_flight.pop(0))

    def snapshot(self, path: str) -> str:
        self.flush()
        return self.wait(self.actor.snapshot.remote(absolute(path)))

    def restore(self, path: str) -> None:
        self.wait(self.actor.restore.remote(absolute(path)))

    def stats(self) -> dict[str, Any]:
        return self.wait(self.actor.stats.remote())
