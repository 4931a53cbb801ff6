"""The training loop shared by local (single-process) and Ray Train (DDP worker) runs.

`train_loop(config, runtime)` builds the model and loader, resumes from the run's latest
checkpoint when there is one, and runs `train_step` over the epochs. What differs between local
and distributed runs is in `Runtime`: rank and world size, the code-store client, how the model
is wrapped (DDP) and how metrics/checkpoints are reported.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from acn_dist.codes.client import PendingNeighbours, StoreClient
from acn_dist.config import Config, from_dict
from acn_dist.data.reader import Batch, ShardLoader
from acn_dist.data.shards import read_manifest
from acn_dist.model.acn import ACN
from acn_dist.train.checkpoint import (
    latest_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from acn_dist.train.step import NonFiniteError, train_step


@dataclass
class Runtime:
    """What a training process needs to know about where it runs."""

    store: StoreClient | None
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


def dataset_folder(config: Config) -> Path:
    return Path(config.data.root) / config.data.dataset


def run_dir(config: Config) -> Path:
    return Path(config.train.storage_path) / config.train.run_id


def say(line: str) -> None:
    """One line to the terminal. (Not `print`: Ray Train patches it, and lines appear twice.)"""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def with_next(batches: Iterator[Batch]) -> Iterator[tuple[Batch, Batch | None]]:
    """Each batch with the one after it (None at the end): prefetch asks for the next batch."""
    current = next(batches, None)
    while current is not None:
        following = next(batches, None)
        yield current, following
        current = following


class Progress:
    """Terminal progress: step, epoch, samples/s, loss, KL, reconstruction, store wait, ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start_step, self.started = total_steps, start_step, time.perf_counter()

    def line(self, step: int, epoch: int, metrics: dict[str, float]) -> str:
        elapsed = time.perf_counter() - self.started
        done = max(step - self.start_step, 1)
        eta = elapsed / done * (self.total - step)
        return (
            f"step {step:>6}/{self.total} epoch {epoch:>3} | {metrics['samples_per_s']:8.0f} samples/s"
            f" | loss {metrics['loss']:8.2f} kl {metrics['kl']:7.2f} recon {metrics['reconstruction']:8.2f}"
            f" nats | store wait {metrics['store_wait_ms']:6.1f} ms/step | ETA {eta / 60:5.1f} min"
        )


def build_model(config: Config, manifest: dict[str, Any]) -> ACN:
    torch.manual_seed(config.train.seed)
    return ACN(config, image_shape_chw(manifest))


def train_loop(config: Config, runtime: Runtime) -> dict[str, Any]:
    """Train as `config` says; returns a summary (final step, losses, checkpoint, history)."""
    folder = dataset_folder(config)
    manifest = read_manifest(folder)
    loader = ShardLoader(
        folder, "train", config.train.batch_size, rank=runtime.rank, world=runtime.world,
        workers=config.data.loader_workers, seed=config.data.seed,
        binarization=config.data.binarize, shuffle_buffer=config.data.shuffle_buffer,
    )
    acn = build_model(config, manifest).to(runtime.device)
    optimizer = torch.optim.Adam(acn.parameters(), lr=config.train.lr)
    steps_per_epoch = [loader.steps(e) for e in range(config.train.epochs)]
    total_steps = sum(steps_per_epoch)
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)

    step, epoch, skip = 0, 0, 0
    out_dir = run_dir(config)
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        state = load_state(checkpoint)
        acn.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        if runtime.is_main:
            set_rng_state(state["rng"][0])
        else:  # other ranks: distinct, reproducible streams from the resumed step
            torch.manual_seed(config.train.seed + 1000 * runtime.rank + step)
        if runtime.store is not None and runtime.is_main:
            # The store may hold rows written after this checkpoint (a worker failed): rewind it.
            runtime.store.restore(str((checkpoint / "codes").resolve()))
        if runtime.is_main:
            say(f"resumed from {checkpoint} at step {step} (epoch {epoch}, batch {skip})")
    else:
        torch.manual_seed(config.train.seed + 1000 * runtime.rank)
    runtime.barrier()  # no rank writes codes before rank 0 has restored the table
    model = runtime.wrap(acn)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    progress = Progress(total_steps, step)
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {"loss": [], "kl": [], "reconstruction": [], "staleness": [],
                                      "data_ms": [], "forward_ms": [], "backward_ms": []}
    window_start, window_samples = time.perf_counter(), 0
    wait_at_window = runtime.store.wait_seconds if runtime.store else 0.0
    skipped_nonfinite = 0
    last_checkpoint: Path | None = checkpoint
    uses_store = acn.objective == "acn"
    prefetch = uses_store and config.codes.mode == "prefetch"

    def checkpoint_state(at_step: int, at_epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        return {"model": acn.state_dict(), "optimizer": optimizer.state_dict(), "step": at_step,
                "epoch": at_epoch, "batch_in_epoch": batch_in_epoch, "rng": [rng_state()],
                "config": config.to_dict(), "image_shape": image_shape_chw(manifest)}

    while step < total_steps and epoch < config.train.epochs:
        pending: PendingNeighbours | None = None
        batch_in_epoch = skip
        epoch_at_start = epoch
        waiting_since = time.perf_counter()
        for (ids, x, _), following in with_next(loader.epoch(epoch, skip=skip)):
            if step >= total_steps:
                break
            window["data_ms"].append(1000 * (time.perf_counter() - waiting_since))
            x = x.to(runtime.device)
            current: PendingNeighbours | None = None
            if prefetch:  # ĉ for this batch, and a request for the next one to run meanwhile
                current = pending or runtime.store.request_neighbours(ids.numpy())
                pending = runtime.store.request_neighbours(following[0].numpy()) if following else None
            try:
                result = train_step(model, acn, optimizer, runtime.store if uses_store else None,
                                    ids, x, step, current, config.train.grad_clip)
            except NonFiniteError:
                if config.train.nonfinite == "stop":
                    raise
                skipped_nonfinite += 1
                result = None
            step += 1
            batch_in_epoch += 1
            window_samples += len(ids)
            if result is not None:
                window["loss"].append(float(result.losses.total.detach().mean()))
                window["kl"].append(float(result.losses.kl.detach().mean()))
                window["reconstruction"].append(float(result.losses.reconstruction.detach().mean()))
                window["staleness"].append(result.neighbour_staleness)
                window["forward_ms"].append(1000 * result.forward_s)
                window["backward_ms"].append(1000 * result.backward_s)
            end_of_epoch = following is None
            if end_of_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            due_checkpoint = step % config.train.checkpoint_every == 0 or step >= total_steps
            if step % config.train.log_every == 0 or due_checkpoint:
                elapsed = time.perf_counter() - window_start
                wait_now = runtime.store.wait_seconds if runtime.store else 0.0
                steps_in_window = max(len(window["loss"]), 1)
                metrics = {
                    "loss": _mean(window["loss"]), "kl": _mean(window["kl"]),
                    "reconstruction": _mean(window["reconstruction"]),
                    "nats_per_image": _mean(window["loss"]),
                    "samples_per_s": window_samples * runtime.world / max(elapsed, 1e-9),
                    "store_wait_ms": 1000 * (wait_now - wait_at_window) / steps_in_window,
                    "staleness": _mean(window["staleness"]),
                    "epoch": float(epoch), "skipped_nonfinite": float(skipped_nonfinite),
                    "data_ms": _mean(window["data_ms"]), "forward_ms": _mean(window["forward_ms"]),
                    "backward_ms": _mean(window["backward_ms"]),
                }
                if uses_store and runtime.is_main:
                    latency = runtime.store.stats()["neighbours_latency"]
                    metrics["store_query_p50_ms"], metrics["store_query_p99_ms"] = latency["p50_ms"], latency["p99_ms"]
                written: Path | None = None
                if due_checkpoint and runtime.is_main:
                    if runtime.store is not None:
                        runtime.store.flush()
                    written = save_checkpoint(out_dir, step, checkpoint_state(step, epoch, batch_in_epoch),
                                              runtime.store if uses_store else _NoStore(),
                                              keep=config.train.keep_checkpoints)
                    last_checkpoint = written
                runtime.report({"step": step, **metrics}, written)
                if runtime.is_main:
                    say(progress.line(step, epoch, metrics))
                history.append({"step": step, **metrics})
                if runtime.is_main:  # as it happens, so a crash keeps the history (and shows redone steps)
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(history[-1]) + "\n")
                window = {key: [] for key in window}
                window_start, window_samples, wait_at_window = time.perf_counter(), 0, wait_now
            if end_of_epoch:
                break
            waiting_since = time.perf_counter()
        if epoch == epoch_at_start and step < total_steps:
            epoch += 1  # nothing left in this epoch (resumed at its end)
        skip = 0
    summary = {
        "run_id": config.train.run_id, "step": step, "epoch": epoch,
        "checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "history": history, "skipped_nonfinite": skipped_nonfinite,
    }
    return summary


def read_history(folder: Path) -> list[dict[str, float]]:
    """The metrics rows rank 0 wrote to `<run>/metrics.jsonl` (all sessions of the run)."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _NoStore:
    """The VAE objective keeps no code table; its checkpoints hold an empty codes folder."""

    def snapshot(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def load_for_evaluation(checkpoint: str | Path) -> tuple[ACN, Config]:
    """Rebuild the model of a checkpoint (on the CPU) and its config."""
    state = load_state(checkpoint)
    config = from_dict(state["config"])
    acn = ACN(config, tuple(state["image_shape"]))
    acn.load_state_dict(state["model"])
    acn.eval()
    return acn, config
