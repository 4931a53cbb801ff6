"""The posterior q(z|x) and the priors over the latent z: p(z|ĉ), N(0, I) and p(z).

All log-densities are in nats and summed over the D latent dimensions: `log_prob(z) -> [B]`.
The posterior is the paper's q(z|x) = N(c, I), or, as a standard VAE's, N(c, diag(sigma^2)) with a
learnt sigma (`model.posterior=learned`); either way its mean c is the datum's code. Both prior
families factorise over dimensions, so each also gives its KL to the posterior per dimension
(`kl_per_dimension`, [B, D]): single-sample Monte Carlo with the z the decoder sees for the
mixture, analytic for N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mean, exp(log_scale)^2)."""
    return -((z - mean) ** 2) * torch.exp(-2 * log_scale) / 2 - log_scale - LOG_SQRT_2PI


@dataclass(frozen=True)
class Posterior:
    """q(z|x) = N(code, diag(exp(log_scale)^2)) for a batch: code [B, D]; log_scale [B, D], or None
    for the paper's unit variance."""

    code: torch.Tensor
    log_scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.code)

    def __getitem__(self, rows: torch.Tensor | slice) -> Posterior:
        return Posterior(self.code[rows], None if self.log_scale is None else self.log_scale[rows])

    def detach(self) -> Posterior:
        return Posterior(self.code.detach(), None if self.log_scale is None else self.log_scale.detach())

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q(z|x): [B, D]."""
        noise = torch.randn(self.code.shape, generator=generator, device=self.code.device, dtype=self.code.dtype)
        return self.code + (noise if self.log_scale is None else noise * self.log_scale.exp())

    def log_prob_per_dimension(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) for each dimension: [B, D]."""
        if self.log_scale is None:
            return -((z - self.code) ** 2) / 2 - LOG_SQRT_2PI
        return normal_log_prob(z, self.code, self.log_scale)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x), summed over dimensions: [B]."""
        return self.log_prob_per_dimension(z).sum(dim=-1)


class DiagonalMixture:
    """Per-dimension mixture of Gaussians: for each latent dimension d, an M-component MoG over z_d.

    logits, means, log_scales: [B, D, M].
    """

    def __init__(self, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
        self.log_weights = F.log_softmax(logits, dim=-1)
        self.means, self.log_scales = means, log_scales

    def log_prob_per_dimension(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, D] -> [B, D] nats."""
        per_component = self.log_weights + normal_log_prob(z.unsqueeze(-1), self.means, self.log_scales)
        return torch.logsumexp(per_component, dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, D] -> [B] nats."""
        return self.log_prob_per_dimension(z).sum(dim=-1)

    def kl_per_dimension(self, posterior: Posterior, z: torch.Tensor) -> torch.Tensor:
        """Single-sample Monte-Carlo KL(q(z|x) || this) per dimension, log q(z|x) - log p(z): [B, D]."""
        return posterior.log_prob_per_dimension(z) - self.log_prob_per_dimension(z)

    @torch.no_grad()
    def kl_estimate(self, posterior: Posterior, samples: int, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """Mean over S samples z ~ q(z|x) of log q(z|x) - log p(z): [B] nats."""
        total = torch.zeros(len(posterior), device=posterior.code.device)
        for _ in range(samples):
            total += self.kl_per_dimension(posterior, posterior.sample(generator)).sum(dim=-1)
        return total / samples

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
    """N(0, I) over `shape` = (B, D): the VAE's prior."""

    def __init__(self, shape: tuple[int, int] = (1, 1), device: torch.device | str = "cpu"):
        self.shape, self.device = shape, device

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return (-(z**2) / 2 - LOG_SQRT_2PI).sum(dim=-1)

    def kl_per_dimension(self, posterior: Posterior, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per dimension, analytic, [B, D] (z is not needed): c^2 / 2 for
        the unit-variance posterior, (c^2 + sigma^2 - 1) / 2 - log sigma for a learnt sigma."""
        if posterior.log_scale is None:
            return 0.5 * posterior.code**2
        return 0.5 * (posterior.code**2 + torch.exp(2 * posterior.log_scale) - 1) - posterior.log_scale

    def kl_estimate(self, posterior: Posterior, samples: int = 1, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        return self.kl_per_dimension(posterior).sum(dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(self.shape, generator=generator, device=self.device)


class StandardNormalPrior(nn.Module):
    """The VAE's prior N(0, I), whatever it is given: it ignores neighbour codes."""

    conditional = False

    def __init__(self, code_size: int):
        super().__init__()
        self.code_size = code_size

    def forward(self, given: torch.Tensor | int | None = None) -> StandardNormal:
        """`given`: neighbour codes [B, D] (ignored but for B), or a batch size."""
        batch = given if isinstance(given, int) else (1 if given is None else len(given))
        device = given.device if isinstance(given, torch.Tensor) else "cpu"
        return StandardNormal((batch, self.code_size), device)


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

    conditional = True

    def __init__(self, code_size: int, hidden: int = 512, layers: int = 3, components: int = 10,
                 min_scale: float = 1e-3):
        super().__init__()
        self.code_size, self.components, self.min_scale = code_size, components, min_scale
        self.hidden_layers = nn.ModuleList(
            nn.Linear(code_size + (hidden if i else 0), hidden) for i in range(layers)
        )
        self.output = nn.Linear(hidden * layers, code_size * components * 3)

    def forward(self, neighbour_code: torch.Tensor | None) -> DiagonalMixture:
        """neighbour_code ĉ: [B, D] -> p(z|ĉ) with [B, D, M] parameters."""
        if neighbour_code is None:
            raise ValueError("the acn objective needs neighbour codes ĉ for its prior p(z|ĉ)")
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


def build_priors(objective: str, code_size: int, hidden: int, layers: int, components: int,
                 min_scale: float) -> tuple[nn.Module, nn.Module]:
    """(prior given a neighbour code, prior from scratch): p(z|ĉ) and the fitted MoG p(z) for the
    ACN; N(0, I) twice for the VAE."""
    if objective == "vae":
        return StandardNormalPrior(code_size), StandardNormalPrior(code_size)
    return (ConditionalPrior(code_size, hidden, layers, components, min_scale),
            UnconditionalPrior(code_size, components, min_scale))
