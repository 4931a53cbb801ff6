"""What training reports: means over a logging window, the run's running averages, and the
progress line on the terminal."""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

from acn_dist.train.lookup import NeighbourLookup
from acn_dist.train.step import StepResult

WINDOW_KEYS = ("loss", "kl", "reconstruction", "auxiliary", "kl_weight", "lr", "context_dropout", "staleness",
               "data_ms", "forward_ms", "backward_ms")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class MetricsWindow:
    """Collects every step since the last log line; `close` turns them into the logged row.

    Loss, KL and reconstruction are nats per image (means over the window's steps and their
    examples); samples/s counts every rank; `mean_samples_per_s` is the whole session's rate."""

    def __init__(self, world: int, lookup: NeighbourLookup, is_main: bool):
        self.world, self.lookup, self.is_main = world, lookup, is_main
        self.session_started = time.perf_counter()
        self.session_samples = 0
        self.skipped_nonfinite = 0
        self._reset()

    def _reset(self) -> None:
        self.values: dict[str, list[float]] = {key: [] for key in WINDOW_KEYS}
        self.started, self.samples = time.perf_counter(), 0
        self.wait_at_start = self.lookup.wait_seconds

    def add(self, result: StepResult | None, samples: int, data_s: float) -> None:
        """One step: its result (None when it was skipped as non-finite), its batch size, the
        seconds it waited for the batch."""
        self.samples += samples
        self.session_samples += samples
        self.values["data_ms"].append(1000 * data_s)
        if result is None:
            self.skipped_nonfinite += 1
            return
        losses = result.losses
        self.values["loss"].append(float(losses.total.detach().mean()))
        self.values["kl"].append(float(losses.kl.detach().mean()))
        self.values["reconstruction"].append(float(losses.reconstruction.detach().mean()))
        self.values["auxiliary"].append(math.nan if losses.auxiliary is None else float(losses.auxiliary.detach().mean()))
        self.values["kl_weight"].append(result.kl_weight)
        self.values["lr"].append(result.lr)
        self.values["context_dropout"].append(result.context_dropout)
        self.values["staleness"].append(result.neighbour_staleness)
        self.values["forward_ms"].append(1000 * result.forward_s)
        self.values["backward_ms"].append(1000 * result.backward_s)

    def close(self, step: int, epoch: int) -> dict[str, float]:
        now = time.perf_counter()
        wait = self.lookup.wait_seconds
        steps = max(len(self.values["loss"]), 1)
        row = {key: _mean(values) for key, values in self.values.items()}
        row.update({
            "step": step, "epoch": float(epoch), "nats_per_image": row["loss"],
            "samples_per_s": self.samples * self.world / max(now - self.started, 1e-9),
            "mean_samples_per_s": self.session_samples * self.world / max(now - self.session_started, 1e-9),
            "store_wait_ms": 1000 * (wait - self.wait_at_start) / steps,
            "skipped_nonfinite": float(self.skipped_nonfinite),
        })
        if self.lookup.has_table and self.is_main:
            stats = self.lookup.stats()
            latency = stats["neighbours_latency"]
            row["store_query_p50_ms"], row["store_query_p99_ms"] = latency["p50_ms"], latency["p99_ms"]
            row["same_batch_share"] = stats["same_batch_share"]
            row["store_rewound_steps"] = float(stats.get("rewound_steps", 0))  # updates lost to store crashes
        self._reset()
        return row


def epoch_losses(history: list[dict[str, Any]], steps_per_epoch: int) -> list[float]:
    """The mean training loss (nats/image) of every epoch, from a run's logged rows (all its
    sessions, as `RunFolder.history` returns them). A row is the mean of the steps since the row
    before it, so it weighs by that step count, and counts for the epoch of its last step. A step
    logged twice (a resumed run redoes the steps after its last checkpoint) counts once, as last
    logged."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    loss_at = {int(row["step"]): float(row["loss"]) for row in history if "step" in row and "loss" in row}
    total: dict[int, float] = defaultdict(float)
    steps: dict[int, int] = defaultdict(int)
    previous = 0
    for step in sorted(loss_at):
        if not math.isnan(loss_at[step]):
            epoch = (step - 1) // steps_per_epoch
            total[epoch] += loss_at[step] * (step - previous)
            steps[epoch] += step - previous
        previous = step
    return [total[epoch] / steps[epoch] for epoch in sorted(total)]


def say(line: str) -> None:
    """One line to the terminal. (Not `print`: Ray Train patches it, and lines appear twice.)"""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Progress:
    """Terminal progress: step, epoch, samples/s, loss, KL, reconstruction, store wait, ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start_step, self.started = total_steps, start_step, time.perf_counter()

    def line(self, metrics: dict[str, Any]) -> str:
        step = int(metrics["step"])
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(step - self.start_step, 1) * (self.total - step)
        return (
            f"step {step:>6}/{self.total} epoch {int(metrics['epoch']):>3} | {metrics['samples_per_s']:8.0f} samples/s"
            f" | loss {metrics['loss']:8.2f} kl {metrics['kl']:7.2f} recon {metrics['reconstruction']:8.2f}"
            f" nats | store wait {metrics['store_wait_ms']:6.1f} ms/step | ETA {eta / 60:5.1f} min"
        )
