"""Where training is (`Position`) and the checkpoints that let it continue from there.

`Checkpointer` writes and reads the whole training state as one: model, optimiser, position in
the data, RNG streams and the code table (through the neighbour lookup, which owns the store
client). A run resumed from a checkpoint gets all of them back together: the table is rewound to
the checkpoint, so model and codes match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from acn_dist.config import Config
from acn_dist.data.shards import dataset_identity
from acn_dist.model.acn import ACN
from acn_dist.runs.checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from acn_dist.runs.folder import RunFolder
from acn_dist.train.lookup import NeighbourLookup
from acn_dist.train.metrics import say


@dataclass(frozen=True)
class Position:
    """Steps taken, and where the next batch comes from: batch `batch_in_epoch` of `epoch`."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def after(self, epoch: int, index: int, end_of_epoch: bool) -> Position:
        """The position once batch `index` of `epoch` has been trained."""
        if end_of_epoch:
            return Position(self.step + 1, epoch + 1, 0)
        return Position(self.step + 1, epoch, index + 1)


class Checkpointer:
    """Saves every `train.checkpoint_every` steps and at the end (rank 0); restores on start."""

    def __init__(self, run: RunFolder, config: Config, acn: ACN, optimizer: torch.optim.Optimizer,
                 lookup: NeighbourLookup, manifest: dict[str, Any], is_main: bool):
        self.run, self.config, self.acn, self.optimizer, self.lookup = run, config, acn, optimizer, lookup
        self.manifest, self.is_main = manifest, is_main
        self.last: Path | None = None

    def restore(self, rank: int) -> Position:
        """Load the run's latest checkpoint, if any, into model, optimiser, RNG and (rank 0) the
        code table; returns where training continues. Other ranks get distinct, reproducible
        RNG streams from the resumed step."""
        seed = self.config.train.seed
        self.last = self.run.latest_checkpoint()
        if self.last is None:
            torch.manual_seed(seed + 1000 * rank)
            return Position()
        checkpoint = load_checkpoint(self.last)
        self.acn.load_state_dict(checkpoint.state["model"])
        self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        meta = checkpoint.meta
        position = Position(meta["step"], meta["epoch"], meta["batch_in_epoch"])
        if self.is_main:
            set_rng_state(checkpoint.state["rng"])
            # The store may hold rows written after this checkpoint (a worker failed): rewind it.
            self.lookup.restore(str(checkpoint.codes.resolve()))
            say(f"resumed from {self.last} at step {position.step} (epoch {position.epoch}, "
                f"batch {position.batch_in_epoch})")
        else:
            torch.manual_seed(seed + 1000 * rank + position.step)
        return position

    def due(self, step: int, final: bool) -> bool:
        return final or step % self.config.train.checkpoint_every == 0

    def maybe_save(self, position: Position, final: bool) -> Path | None:
        """Write the checkpoint of `position` when one is due (rank 0 only); returns its folder."""
        return self.save(position) if self.due(position.step, final) else None

    def save(self, position: Position) -> Path | None:
        """Write the checkpoint of `position` now (rank 0 only); returns its folder."""
        if not self.is_main:
            return None
        self.lookup.flush()
        state = {"model": self.acn.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        meta = {"step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
                "config": self.config.to_dict(), "image_shape": list(self.acn.image_shape),
                "dataset": dataset_identity(self.manifest)}
        self.last = save_checkpoint(self.run.path, state, meta, self.lookup if self.lookup.has_table else None,
                                    keep=self.config.train.keep_checkpoints)
        return self.last
