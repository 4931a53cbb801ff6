"""Where the neighbour code ĉ comes from: one object, chosen once from the config.

- `NoLookup` (the VAE): its prior N(0, I) needs no neighbour; no code table is kept.
- `ExactLookup` (the paper's Algorithm 1, the default): the batch's fresh codes are written into
  the code store, then the store is searched with those same codes, each datum's own id excluded
  (and, with `codes.exclude_batch`, the ids of its whole batch); ĉ is drawn uniformly among the K
  nearest. The step sends both as soon as the codes exist and decodes while the store works; it
  waits only where the prior needs ĉ (`ask_neighbour_codes` sends, the callable it returns waits).
- `PrefetchLookup` (the fast option): ĉ for a batch is requested with the batch's *stored* codes
  (those of its last visit) while the previous batch trains, so the step does not wait. In the
  first epoch the stored codes are still the random initial ones, so it works exactly as
  `ExactLookup` until every datum has been visited once (warm start); its staleness is logged.

The lookup owns the worker's store client: the checkpointer and the metrics ask it for the
table's snapshot, restore and stats, and nothing else in training talks to the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from acn_dist.codes.client import PendingNeighbours, StoreClient
from acn_dist.config import Config
from acn_dist.errors import NonFiniteError


class NoLookup:
    """The VAE: no neighbour codes, no code table."""

    wait_seconds = 0.0
    staleness = math.nan

    def begin_batch(self, ids: torch.Tensor, next_ids: torch.Tensor | None, epoch: int) -> None:
        pass

    def ask_neighbour_codes(self, ids: torch.Tensor, code: torch.Tensor, step: int
                            ) -> Callable[[], torch.Tensor | None]:
        return lambda: None

    def flush(self) -> None:
        pass

    def snapshot(self, path: str) -> None:
        pass

    def restore(self, path: str) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    @property
    def has_table(self) -> bool:
        return False


class ExactLookup:
    """Algorithm 1: write the batch's fresh codes, then search the table with them."""

    def __init__(self, store: StoreClient, exclude_batch: bool = False):
        self.store = store
        self.exclude_batch = exclude_batch
        self.staleness = math.nan  # mean steps since the picked neighbour codes were written
        self._prefetched: PendingNeighbours | None = None

    @property
    def has_table(self) -> bool:
        return True

    @property
    def wait_seconds(self) -> float:
        return self.store.wait_seconds

    def begin_batch(self, ids: torch.Tensor, next_ids: torch.Tensor | None, epoch: int) -> None:
        self._prefetched = None

    def ask_neighbour_codes(self, ids: torch.Tensor, code: torch.Tensor, step: int
                            ) -> Callable[[], torch.Tensor]:
        """Algorithm 1, steps 2-3 for a batch, sent: c(x) <- code; KNN(x). `code`: [B, D], detached.
        Returns the wait for ĉ [B, D], so the caller can decode while a remote store works."""
        if not torch.isfinite(code).all():
            raise NonFiniteError(f"step {step}: the encoder produced NaN/Inf codes; none were stored")
        ids_np, code_np = ids.numpy(), code.cpu().numpy()
        self.store.update(ids_np, code_np, step)  # 2. c(x) <- mean of q(z|x)
        pending = self._prefetched or self.store.request_neighbours(  # 3. KNN(x), ĉ among them
            ids_np, code_np, exclude_batch=self.exclude_batch)

        def receive() -> torch.Tensor:
            found = pending.result()
            self.staleness = float(np.mean(found.staleness)) if len(found.staleness) else math.nan
            return torch.tensor(found.neighbour_codes, device=code.device)  # a copy: Ray results are read-only

        return receive

    def flush(self) -> None:
        self.store.flush()

    def snapshot(self, path: str) -> None:
        self.store.snapshot(path)

    def restore(self, path: str) -> None:
        self.store.restore(path)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


class PrefetchLookup(ExactLookup):
    """ĉ requested one batch ahead with stored codes; exact during the first epoch (warm start)."""

    def __init__(self, store: StoreClient, exclude_batch: bool = False, warm_epochs: int = 1):
        super().__init__(store, exclude_batch)
        self.warm_epochs = warm_epochs
        self._next: PendingNeighbours | None = None

    def begin_batch(self, ids: torch.Tensor, next_ids: torch.Tensor | None, epoch: int) -> None:
        if epoch < self.warm_epochs:  # stored codes are still the random initial ones
            self._prefetched = self._next = None
            return
        self._prefetched = self._next or self.store.request_neighbours(ids.numpy(), exclude_batch=self.exclude_batch)
        self._next = (self.store.request_neighbours(next_ids.numpy(), exclude_batch=self.exclude_batch)
                      if next_ids is not None else None)


NeighbourLookup = NoLookup | ExactLookup | PrefetchLookup


def build_lookup(config: Config, store: StoreClient | None) -> NeighbourLookup:
    """The lookup the config asks for, owning `store` (None exactly when no table is kept)."""
    if not config.uses_code_table:
        return NoLookup()
    if store is None:
        raise ValueError("the acn objective needs a code store client")
    if config.codes.mode == "prefetch":
        return PrefetchLookup(store, config.codes.exclude_batch, config.codes.prefetch_warm_epochs)
    return ExactLookup(store, config.codes.exclude_batch)
