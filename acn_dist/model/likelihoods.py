"""The decoder's output distribution r(x|z) per pixel, in nats.

A decoder emits `raw` = [B, C * P, H, W]: P numbers per pixel and channel. Each likelihood says how
many it needs (`parameters`), the code length of x under them (`nats`, [B]), a sample (`sample`)
and the mean image (`mean`), all for images x [B, C, H, W] in [0, 1]:

- `bernoulli` (P = 1): binarised pixels, logits of p(x = 1).
- `categorical` (P = 256): 8-bit pixels, a 256-way softmax per pixel and channel.
- `logistic` (P = 3M): 8-bit pixels, a mixture of M discretised logistics per pixel and channel
  (Salimans et al., PixelCNN++, 2017): a few numbers per pixel instead of 256, and nearby
  intensities share probability, which the 256-way softmax has to learn.
Channels are modelled independently given z (and, for the PixelCNN, the pixels before).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("bernoulli", "categorical", "logistic")


class Likelihood:
    parameters = 1

    def __init__(self, channels: int):
        self.channels = channels

    def split(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, C * P, H, W] -> [B, C, P, H, W]."""
        batch, _, height, width = raw.shape
        return raw.reshape(batch, self.channels, self.parameters, height, width)

    def nats(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def mean(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Bernoulli(Likelihood):
    parameters = 1

    def nats(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(raw, x, reduction="none").flatten(1).sum(dim=1)

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(raw), generator=generator)

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)


class Categorical(Likelihood):
    parameters = 256

    def nats(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        targets = torch.round(x * 255).long()  # [B, C, H, W] in 0..255
        logits = self.split(raw).transpose(1, 2)  # classes on dim 1: [B, 256, C, H, W]
        return F.cross_entropy(logits, targets, reduction="none").flatten(1).sum(dim=1)

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = torch.softmax(self.split(raw).movedim(2, -1), dim=-1)  # [B, C, H, W, 256]
        flat = torch.multinomial(probs.reshape(-1, 256), 1, generator=generator)
        return flat.reshape(probs.shape[:-1]).float() / 255

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.split(raw), dim=2)
        return (probs * torch.arange(256.0, device=raw.device)[None, None, :, None, None]).sum(2) / 255


class DiscretisedLogistic(Likelihood):
    """M discretised logistics per pixel on [-1, 1] with bins of width 2/255; the end bins take
    the tails, so the 256 probabilities sum to one."""

    def __init__(self, channels: int, components: int = 5):
        super().__init__(channels)
        self.components = components
        self.parameters = 3 * components

    def _parts(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, means, log_scales = self.split(raw).chunk(3, dim=2)  # each [B, C, M, H, W]
        return F.log_softmax(logits, dim=2), means, log_scales.clamp(min=-7.0)

    def log_probs(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log r(x|z) per pixel and channel: [B, C, H, W]."""
        log_weights, means, log_scales = self._parts(raw)
        value = (x * 2 - 1).unsqueeze(2)  # [B, C, 1, H, W] in [-1, 1]
        centred = value - means
        inverse_scale = torch.exp(-log_scales)
        upper = inverse_scale * (centred + 1 / 255)
        lower = inverse_scale * (centred - 1 / 255)
        log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the 0 bin takes the left tail
        log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): the 255 bin the right tail
        bin_mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        middle = inverse_scale * centred  # the density at the bin centre, for vanishing bin masses
        log_density_mid = middle - log_scales - 2 * F.softplus(middle) - math.log(127.5)
        inner = torch.where(bin_mass > 1e-5, torch.log(bin_mass.clamp(min=1e-12)), log_density_mid)
        per_component = torch.where(value < -0.999, log_cdf_upper,
                                    torch.where(value > 0.999, log_survival_lower, inner))
        return torch.logsumexp(per_component + log_weights, dim=2)

    def nats(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.log_probs(raw, x).flatten(1).sum(dim=1)

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        log_weights, means, log_scales = self._parts(raw)
        weights = log_weights.exp().movedim(2, -1)  # [B, C, H, W, M]
        component = torch.multinomial(weights.reshape(-1, self.components), 1, generator=generator)
        component = component.reshape(weights.shape[:-1]).unsqueeze(2)  # [B, C, 1, H, W]
        mean = means.gather(2, component).squeeze(2)
        scale = log_scales.gather(2, component).squeeze(2).exp()
        uniform = torch.rand(mean.shape, generator=generator, device=mean.device).clamp(1e-5, 1 - 1e-5)
        value = (mean + scale * (torch.log(uniform) - torch.log1p(-uniform))).clamp(-1, 1)
        return torch.round((value + 1) * 127.5) / 255

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        log_weights, means, _ = self._parts(raw)
        return ((log_weights.exp() * means.clamp(-1, 1)).sum(2) + 1) / 2


def build_likelihood(kind: str, channels: int, components: int = 5) -> Likelihood:
    if kind == "bernoulli":
        return Bernoulli(channels)
    if kind == "categorical":
        return Categorical(channels)
    if kind == "logistic":
        return DiscretisedLogistic(channels, components)
    raise ValueError(f"likelihood {kind!r} is not one of {KINDS}")
