"""The worker-side view of the code store.

Training talks to the store only through a client: `update` (fire-and-forget where the store is
remote), `request_neighbours` (returns a pending result; `.result()` waits) and the persistence
calls. `LocalClient` wraps an in-process `CodeStore`; the Ray actor's client lives in
`acn_dist.codes.actor` and has the same methods. Both count the seconds the training step spent
waiting on the store.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from acn_dist.codes.store import CodeStore, Neighbours


class PendingNeighbours(Protocol):
    def result(self) -> Neighbours: ...


class StoreClient(Protocol):
    wait_seconds: float

    def update(self, ids: np.ndarray, codes: np.ndarray, step: int) -> None: ...

    def request_neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None) -> PendingNeighbours: ...

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

    def _timed(self, call: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.wait_seconds += time.perf_counter() - start

    def update(self, ids: np.ndarray, codes: np.ndarray, step: int) -> None:
        self._timed(self.store.update, ids, codes, step)

    def request_neighbours(self, ids: np.ndarray, codes: np.ndarray | None = None) -> PendingNeighbours:
        return _Done(self._timed(self.store.neighbours, ids, codes))

    def flush(self) -> None:
        pass

    def snapshot(self, path: str) -> Any:
        return self.store.snapshot(path)

    def restore(self, path: str) -> None:
        self.store.restore(path)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()
