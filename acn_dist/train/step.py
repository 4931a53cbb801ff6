"""One training step: the paper's Algorithm 1 for a batch.

    1. (before training) the code store holds c(x) ~ N(0, 1) for every training x
    2. encode x; write the new code into the store: c(x) <- mean of q(z|x)
    3. KNN(x) <- K nearest neighbours of c(x) among the stored codes, self excluded; pick ĉ
    4. sample z ~ q(z|x); decode; prior p(z|ĉ); loss = KL - log r(x|z); step

Steps 2-3 are the neighbour lookup's (`acn_dist.train.lookup`): from inside the model's one
forward pass (so that DDP sees one forward) it sends the codes and the search as soon as the codes
exist, and the model decodes z while the store works, waiting for ĉ only where the prior needs it.
The VAE's lookup answers with nothing and its prior N(0, I) needs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from acn_dist.config import TrainConfig
from acn_dist.errors import NonFiniteError
from acn_dist.model.acn import ACN, Losses, context_dropout_rate, kl_weight
from acn_dist.train.lookup import NeighbourLookup

DEFAULTS = TrainConfig()  # frozen: safe to share


@dataclass
class StepResult:
    losses: Losses
    neighbour_staleness: float  # mean steps since the picked neighbour codes were written (nan: vae)
    kl_weight: float = 1.0  # the KL's weight in this step's training loss (warm-up)
    lr: float = math.nan  # the optimiser's learning rate in this step
    context_dropout: float = 0.0  # the share of the decoder's context hidden in this step
    forward_s: float = 0.0  # encode, prior, decode, loss (store calls excluded)
    backward_s: float = 0.0  # backward (with DDP's allreduce) and the optimiser step


def learning_rate(step: int, total_steps: int, settings: TrainConfig = DEFAULTS) -> float:
    """The learning rate at `step` of `total_steps`: `settings.lr` throughout (constant), or falling
    from `settings.lr` to `settings.lr_min` along a half cosine (cosine). A function of the step
    alone, so a resumed run continues the same curve with nothing of it in the checkpoint."""
    if settings.lr_schedule == "constant" or total_steps <= 0:
        return settings.lr
    progress = min(step / total_steps, 1.0)
    return settings.lr_min + 0.5 * (settings.lr - settings.lr_min) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model: nn.Module, acn: ACN, optimizer: torch.optim.Optimizer, lookup: NeighbourLookup,
               ids: torch.Tensor, x: torch.Tensor, step: int, settings: TrainConfig = DEFAULTS) -> StepResult:
    """Algorithm 1 for the batch (`ids` [B], `x` [B, C, H, W]). `model` runs the forward pass: the
    DDP wrapper of `acn`, or `acn` itself. `settings` gives the KL warm-up, free bits, context
    dropout and gradient clipping. Raises `NonFiniteError` before anything of a step with NaN/Inf
    codes or loss reaches the code table or the weights."""
    started, waited_before = time.perf_counter(), lookup.wait_seconds

    # 2-4: encode x; send c(x) and KNN(x) to the store (the lookup); z ~ q(z|x); decode; wait for ĉ; p(z|ĉ)
    hidden = context_dropout_rate(step, settings.context_dropout, settings.context_dropout_steps)
    _, losses = model(x, lambda code: lookup.ask_neighbour_codes(ids, code, step), context_dropout=hidden)
    weight = kl_weight(step, settings.kl_warmup_steps)
    loss = acn.training_loss(losses, weight, settings.free_bits)
    if not torch.isfinite(loss):
        raise NonFiniteError(f"step {step}: loss is {loss.item()}; the weights were not updated")
    forward_done = time.perf_counter()

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(acn.parameters(), settings.grad_clip)
    optimizer.step()

    store_wait = lookup.wait_seconds - waited_before
    return StepResult(losses=losses, neighbour_staleness=lookup.staleness, kl_weight=weight,
                      lr=optimizer.param_groups[0]["lr"],
                      context_dropout=hidden,
                      forward_s=forward_done - started - store_wait, backward_s=time.perf_counter() - forward_done)
