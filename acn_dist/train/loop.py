"""The training loop shared by local (single-process) and Ray Train (DDP worker) runs.

`train_loop(config, runtime)` is Algorithm 1 and the schedule around it: batches come in, each is
one `train_step` (encode, write codes, neighbour lookup, prior, decode, step); every
`train.log_every` steps the metrics window is reported and, when due, a checkpoint written. What
differs between local and distributed runs is in `Runtime`: rank and world size, the code-store
client, how the model is wrapped (DDP), how metrics and checkpoints are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acn_dist.codes.client import StoreClient
from acn_dist.config import Config
from acn_dist.data.reader import Batch, ShardLoader
from acn_dist.data.shards import dataset_folder, read_manifest
from acn_dist.errors import NonFiniteError, Stopped
from acn_dist.model.acn import build_model
from acn_dist.runs.folder import RunFolder
from acn_dist.train.lookup import build_lookup
from acn_dist.train.metrics import MetricsWindow, Progress, say
from acn_dist.train.state import Checkpointer, Position
from acn_dist.train.step import learning_rate, set_learning_rate, train_step
from acn_dist.train.stopping import StopSignals


@dataclass
class Runtime:
    """What a training process needs to know about where it runs."""

    store: StoreClient | None  # None exactly when the objective keeps no code table
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module  # DDP on Ray Train workers
    # Called on every rank at every log step (Ray Train's report is a barrier); `checkpoint` is
    # the folder written by rank 0 at this step, or None.
    report: Callable[[dict[str, float], Path | None], None] = lambda metrics, checkpoint: None
    barrier: Callable[[], None] = lambda: None  # all ranks wait here (after the store is restored)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def image_shape_chw(manifest: dict[str, Any]) -> tuple[int, int, int]:
    shape = manifest["image_shape"]
    return (1, shape[0], shape[1]) if len(shape) == 2 else (shape[2], shape[0], shape[1])


def planned_steps(loader: ShardLoader, config: Config) -> int:
    total = sum(loader.steps(epoch) for epoch in range(config.train.epochs))
    return min(total, config.train.max_steps) if config.train.max_steps else total


def batches_from(loader: ShardLoader, position: Position, epochs: int
                 ) -> Iterator[tuple[int, int, Batch, Batch | None]]:
    """(epoch, index in epoch, batch, the batch after it in the epoch or None) from `position` on."""
    epoch, skip = position.epoch, position.batch_in_epoch
    while epoch < epochs:
        batches = loader.epoch(epoch, skip=skip)
        index, current = skip, next(batches, None)
        while current is not None:
            following = next(batches, None)
            yield epoch, index, current, following
            index, current = index + 1, following
        epoch, skip = epoch + 1, 0


def train_loop(config: Config, runtime: Runtime) -> dict[str, Any]:
    """Train as `config` says; returns a summary (final step, checkpoint, history of this session)."""
    folder = dataset_folder(config.data)
    manifest = read_manifest(folder)
    loader = ShardLoader(folder, "train", config.train.batch_size, rank=runtime.rank, world=runtime.world,
                         workers=config.data.loader_workers, seed=config.data.seed,
                         binarization=config.data.binarize, shuffle_buffer=config.data.shuffle_buffer,
                         max_shift=config.data.augment_shift)
    acn = build_model(config, image_shape_chw(manifest)).to(runtime.device)
    optimizer = torch.optim.Adam(acn.parameters(), lr=config.train.lr)
    lookup = build_lookup(config, runtime.store)
    run = RunFolder.at(config.train.storage_path, config.train.run_id)
    checkpointer = Checkpointer(run, config, acn, optimizer, lookup, manifest, runtime.is_main)
    position = checkpointer.restore(runtime.rank)
    if position.step == 0 and config.model.init_code_std > 0:  # a fresh run; DDP then copies rank 0's weights
        acn.initialise_codes(next(loader.epoch(0))[1].to(runtime.device), config.model.init_code_std)
    runtime.barrier()  # no rank writes codes before rank 0 has restored the table
    model = runtime.wrap(acn)
    total = planned_steps(loader, config)
    window, progress = MetricsWindow(runtime.world, lookup, runtime.is_main), Progress(total, position.step)
    history: list[dict[str, float]] = []

    waiting_since = time.perf_counter()
    with StopSignals() as stop:
        for epoch, index, (ids, x, _), following in batches_from(loader, position, config.train.epochs):
            if position.step >= total:
                break
            data_s = time.perf_counter() - waiting_since
            lookup.begin_batch(ids, following[0] if following is not None else None, epoch)
            set_learning_rate(optimizer, learning_rate(position.step, total, config.train))
            try:
                result = train_step(model, acn, optimizer, lookup, ids, x.to(runtime.device), position.step,
                                    config.train)
            except NonFiniteError:
                if config.train.nonfinite == "stop":
                    raise
                result = None  # skipped and counted; nothing of it reached the table or the weights
            position = position.after(epoch, index, end_of_epoch=following is None)
            window.add(result, len(ids), data_s)
            final = position.step >= total
            if position.step % config.train.log_every == 0 or checkpointer.due(position.step, final) or stop.requested:
                row = window.close(position.step, position.epoch)
                checkpoint = checkpointer.save(position) if stop.requested else checkpointer.maybe_save(position, final)
                runtime.report(row, checkpoint)
                history.append(row)
                if runtime.is_main:  # as it happens, so a crash keeps the history (and shows redone steps)
                    run.append_history(row)
                    say(progress.line(row))
                if stop.requested and not final:
                    raise Stopped(stop.signum or 0, position.step, str(checkpoint) if checkpoint else None)
            waiting_since = time.perf_counter()
    return {"run_id": config.train.run_id, "step": position.step, "epoch": position.epoch,
            "checkpoint": str(checkpointer.last) if checkpointer.last else None, "history": history,
            "skipped_nonfinite": window.skipped_nonfinite}
