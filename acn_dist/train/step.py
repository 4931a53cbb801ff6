"""One training step: the paper's Algorithm 1 for a batch.

    1. (before training) the code store holds c(x) ~ N(0, 1) for every training x
    2. encode x; write the new code into the store: c(x) <- mean of q(z|x)
    3. KNN(x) <- K nearest neighbours of c(x) among the stored codes, self excluded; pick ĉ
    4. prior p(z|ĉ); sample z ~ q(z|x); decode; loss = KL - log r(x|z); step

In `exact` mode step 3 searches with the fresh codes (the paper's algorithm; the worker waits).
In `prefetch` mode ĉ was requested, by ids, while the previous batch trained: the queries are the
batch's stored codes (one visit old), which hides the search behind the previous step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acn_dist.codes.client import PendingNeighbours, StoreClient
from acn_dist.model.acn import ACN, Losses


class NonFiniteError(FloatingPointError):
    """A step produced NaN/Inf codes or loss; nothing from it entered the store or the weights."""


@dataclass
class StepResult:
    losses: Losses
    neighbour_staleness: float  # mean steps since the picked neighbour codes were written (nan: vae)
    forward_s: float = 0.0  # encode, prior, decode, loss (store calls excluded)
    backward_s: float = 0.0  # backward (with DDP's allreduce) and the optimiser step


def train_step(
    model: nn.Module,
    acn: ACN,
    optimizer: torch.optim.Optimizer,
    store: StoreClient | None,
    ids: torch.Tensor,
    x: torch.Tensor,
    step: int,
    prefetched: PendingNeighbours | None = None,
    grad_clip: float = 0.0,
) -> StepResult:
    """`model` runs the forward pass: the DDP wrapper of `acn`, or `acn` itself."""
    staleness: list[float] = []

    def write_code_and_find_neighbour(code: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(code).all():
            raise NonFiniteError(f"step {step}: the encoder produced NaN/Inf codes; none were stored")
        code_np, ids_np = code.cpu().numpy(), ids.numpy()
        store.update(ids_np, code_np, step)  # 2. c(x) <- mean of q(z|x)
        found = (prefetched or store.request_neighbours(ids_np, code_np)).result()  # 3. KNN(x), ĉ
        staleness.append(float(np.mean(found.staleness)))
        return torch.tensor(found.neighbour_codes, device=code.device)  # a copy: Ray results are read-only

    # 2-4: encode; write the code and pick ĉ; p(z|ĉ); z ~ q(z|x); decode
    started, waited_before = time.perf_counter(), store.wait_seconds if store else 0.0
    _, losses = model(x, write_code_and_find_neighbour)
    loss = acn.training_loss(losses)
    if not torch.isfinite(loss):
        raise NonFiniteError(f"step {step}: loss is {loss.item()}; the weights were not updated")
    forward_done = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(acn.parameters(), grad_clip)
    optimizer.step()
    store_wait = (store.wait_seconds - waited_before) if store else 0.0
    return StepResult(losses=losses, neighbour_staleness=staleness[0] if staleness else math.nan,
                      forward_s=forward_done - started - store_wait, backward_s=time.perf_counter() - forward_done)
