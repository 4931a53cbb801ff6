"""The ACN and VAE objective: one model, a prior switch.

    L(x) = KL( q(z|x) || p(z|ĉ) ) - E_{z~q(z|x)} log r(x|z)        (acn, ĉ a neighbour's code)
    L(x) = KL( q(z|x) || N(0, I) ) - E_{z~q(z|x)} log r(x|z)        (vae)

q(z|x) = N(c, I): the encoder gives only the mean c, "the code". All terms are per example, in
nats. Training uses a single-sample Monte-Carlo KL, log q(z|x) - log p(z|ĉ), with the same z fed
to the decoder (the VAE uses its analytic KL, 0.5 ||c||^2). No gradient flows into ĉ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acn_dist.config import Config, likelihood
from acn_dist.model.networks import build_decoder, build_encoder
from acn_dist.model.priors import (
    LOG_SQRT_2PI,
    ConditionalPrior,
    DiagonalMixture,
    StandardNormal,
    UnconditionalPrior,
)


@dataclass
class Losses:
    """Per-example terms [B] in nats. `total` = kl + reconstruction (the code length of x)."""

    total: torch.Tensor
    kl: torch.Tensor
    reconstruction: torch.Tensor
    prior_fit: torch.Tensor  # -log p(z) of the unconditional prior on detached z (trains p(z) only)


def posterior_log_prob(z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """log q(z|x) = log N(z; c, I), summed over dimensions: [B]."""
    return (-((z - code) ** 2) / 2 - LOG_SQRT_2PI).sum(dim=-1)


def reconstruction_nats(logits: torch.Tensor, x: torch.Tensor, likelihood_kind: str) -> torch.Tensor:
    """-log r(x|z) per example, nats: [B]. Bernoulli targets are {0,1}; categorical ones 8-bit."""
    if likelihood_kind == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return nll.flatten(1).sum(dim=1)
    targets = torch.round(x * 255).long()  # [B, C, H, W] in 0..255; logits [B, C, 256, H, W]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # classes on dim 1
    return nll.flatten(1).sum(dim=1)


class ACN(nn.Module):
    """Encoder, decoder, conditional prior p(z|ĉ) and unconditional prior p(z)."""

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        model, prior = config.model, config.prior
        self.objective = model.objective
        self.likelihood = likelihood(config)
        self.image_shape = image_shape
        self.code_size = model.code_size
        self.encoder = build_encoder(model.encoder, image_shape, model.code_size, model.hidden, model.channels)
        self.decoder = build_decoder(model.decoder, image_shape, model.code_size, self.likelihood,
                                     model.hidden, model.channels, model.pixelcnn_channels,
                                     model.pixelcnn_layers)
        # p(z|ĉ) exists only for the acn objective (DDP refuses parameters that get no gradient).
        self.prior = (ConditionalPrior(model.code_size, prior.hidden, prior.layers, prior.components,
                                       prior.min_scale) if self.objective == "acn" else None)
        self.unconditional_prior = UnconditionalPrior(model.code_size, prior.components, prior.min_scale)
        self.standard_normal = StandardNormal()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> code c [B, D], the mean of q(z|x)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor,
                neighbour_codes_for: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, Losses]:
        """Encode x, get ĉ from `neighbour_codes_for(code)` (which writes the code table and
        searches it), then the objective: `(code [B, D], Losses)`. One call, so that DDP sees the
        whole computation in one forward pass."""
        code = self.encode(x)
        neighbour_code = None
        if self.objective == "acn":
            if neighbour_codes_for is None:
                raise ValueError("the acn objective needs neighbour codes ĉ")
            neighbour_code = neighbour_codes_for(code.detach())
        return code, self.losses(x, code, neighbour_code)

    def prior_given(self, neighbour_code: torch.Tensor | None) -> DiagonalMixture | StandardNormal:
        if self.objective == "vae":
            return self.standard_normal
        if neighbour_code is None:
            raise ValueError("the acn objective needs neighbour codes ĉ")
        return self.prior(neighbour_code.detach())  # no gradient into ĉ

    def sample_posterior(self, code: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(code.shape, generator=generator, device=code.device, dtype=code.dtype)
        return code + noise

    def losses(self, x: torch.Tensor, code: torch.Tensor, neighbour_code: torch.Tensor | None,
               generator: torch.Generator | None = None) -> Losses:
        """The objective for a batch whose codes are already computed (Algorithm 1, step 4)."""
        z = self.sample_posterior(code, generator)
        prior = self.prior_given(neighbour_code)
        if self.objective == "vae":
            kl = 0.5 * (code**2).sum(dim=-1)  # analytic KL(N(c, I) || N(0, I))
        else:
            kl = posterior_log_prob(z, code) - prior.log_prob(z)
        reconstruction = reconstruction_nats(self.decoder(z, x), x, self.likelihood)
        prior_fit = -self.unconditional_prior(len(z)).log_prob(z.detach())
        return Losses(total=kl + reconstruction, kl=kl, reconstruction=reconstruction, prior_fit=prior_fit)

    def training_loss(self, losses: Losses) -> torch.Tensor:
        """Scalar to minimise: mean code length plus the unconditional prior's own fit."""
        return losses.total.mean() + losses.prior_fit.mean()

    @torch.no_grad()
    def kl_estimate(self, code: torch.Tensor, neighbour_code: torch.Tensor | None, samples: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """S-sample Monte-Carlo KL(q(z|x) || prior) per example, nats [B] (analytic for the VAE)."""
        if self.objective == "vae":
            return 0.5 * (code**2).sum(dim=-1)
        return self.monte_carlo_kl(code, self.prior_given(neighbour_code), samples, generator)

    @torch.no_grad()
    def monte_carlo_kl(self, code: torch.Tensor, prior: DiagonalMixture | StandardNormal, samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """mean over S samples z ~ q(z|x) of log q(z|x) - log prior(z): [B] nats."""
        total = torch.zeros(len(code), device=code.device)
        for _ in range(samples):
            z = self.sample_posterior(code, generator)
            total += posterior_log_prob(z, code) - prior.log_prob(z)
        return total / samples


def nats_to_bits_per_dim(nats: float, pixels: int) -> float:
    return nats / (pixels * math.log(2))
