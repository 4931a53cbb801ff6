"""Priors over the latent z: the conditional prior network p(z|ĉ), N(0, I), and p(z).

All log-densities are in nats and summed over the D latent dimensions: `log_prob(z) -> [B]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mean, exp(log_scale)^2)."""
    return -((z - mean) ** 2) * torch.exp(-2 * log_scale) / 2 - log_scale - LOG_SQRT_2PI


class DiagonalMixture:
    """Per-dimension mixture of Gaussians: for each latent dimension d, an M-component MoG over z_d.

    logits, means, log_scales: [B, D, M].
    """

    def __init__(self, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
        self.log_weights = F.log_softmax(logits, dim=-1)
        self.means, self.log_scales = means, log_scales

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, D] -> [B] nats."""
        per_component = self.log_weights + normal_log_prob(z.unsqueeze(-1), self.means, self.log_scales)
        return torch.logsumexp(per_component, dim=-1).sum(dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One z [B, D] per row."""
        weights = self.log_weights.exp()
        flat = weights.reshape(-1, weights.shape[-1])
        component = torch.multinomial(flat, 1, generator=generator).reshape(weights.shape[:-1])
        mean = self.means.gather(-1, component.unsqueeze(-1)).squeeze(-1)
        scale = self.log_scales.gather(-1, component.unsqueeze(-1)).squeeze(-1).exp()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + scale * noise


class StandardNormal:
    """N(0, I): the VAE's prior."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return (-(z**2) / 2 - LOG_SQRT_2PI).sum(dim=-1)

    def sample_like(self, code: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(code.shape, generator=generator, device=code.device, dtype=code.dtype)


def _mixture_from(raw: torch.Tensor, dim: int, components: int, min_scale: float) -> DiagonalMixture:
    raw = raw.reshape(*raw.shape[:-1], dim, components, 3)
    logits, means, scale_raw = raw.unbind(dim=-1)
    log_scales = torch.log(F.softplus(scale_raw) + min_scale)
    return DiagonalMixture(logits, means, log_scales)


class ConditionalPrior(nn.Module):
    """p(z|ĉ): the paper's prior network.

    An MLP with `layers` hidden layers of `hidden` tanh units, skip connections from the input to
    every hidden layer and from every hidden layer to the output; the output parametrises, for
    every latent dimension, a mixture of `components` Gaussians.
    """

    def __init__(self, code_size: int, hidden: int = 512, layers: int = 3, components: int = 10,
                 min_scale: float = 1e-3):
        super().__init__()
        self.code_size, self.components, self.min_scale = code_size, components, min_scale
        self.hidden_layers = nn.ModuleList(
            nn.Linear(code_size + (hidden if i else 0), hidden) for i in range(layers)
        )
        self.output = nn.Linear(hidden * layers, code_size * components * 3)

    def forward(self, neighbour_code: torch.Tensor) -> DiagonalMixture:
        """neighbour_code ĉ: [B, D] -> p(z|ĉ) with [B, D, M] parameters."""
        hidden_states: list[torch.Tensor] = []
        for index, layer in enumerate(self.hidden_layers):
            inputs = neighbour_code if index == 0 else torch.cat([neighbour_code, hidden_states[-1]], -1)
            hidden_states.append(torch.tanh(layer(inputs)))
        raw = self.output(torch.cat(hidden_states, dim=-1))
        return _mixture_from(raw, self.code_size, self.components, self.min_scale)


class UnconditionalPrior(nn.Module):
    """p(z): a per-dimension mixture of Gaussians with free parameters, fitted to posterior samples
    (detached), used to code the first datum of an ordering and to sample from scratch."""

    def __init__(self, code_size: int, components: int = 10, min_scale: float = 1e-3):
        super().__init__()
        self.code_size, self.components, self.min_scale = code_size, components, min_scale
        raw = torch.zeros(code_size * components * 3)
        spread = torch.linspace(-2, 2, components)
        raw.view(code_size, components, 3)[..., 1] = spread  # means spread over the N(0,1) range
        self.raw = nn.Parameter(raw)

    def forward(self, batch_size: int = 1) -> DiagonalMixture:
        raw = self.raw.expand(batch_size, -1)
        return _mixture_from(raw, self.code_size, self.components, self.min_scale)
