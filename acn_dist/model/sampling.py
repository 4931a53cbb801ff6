"""Drawing images from the decoder r(x|z): in one pass for independent pixels, pixel by pixel
(raster order) for the autoregressive gated PixelCNN."""

from __future__ import annotations

import torch

from acn_dist.model.acn import ACN
from acn_dist.model.networks import GatedPixelCNN


@torch.no_grad()
def decode(acn: ACN, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ r(x|z) for each row of z: [B, C, H, W] in [0, 1]."""
    channels, height, width = acn.image_shape
    if not isinstance(acn.decoder, GatedPixelCNN):
        return acn.likelihood.sample(acn.decoder(z), generator)
    x = torch.zeros(len(z), channels, height, width, device=z.device)
    for row in range(height):  # each pixel given those before it
        for column in range(width):
            raw = acn.decoder(z, x)[..., row:row + 1, column:column + 1]
            x[:, :, row, column] = acn.likelihood.sample(raw, generator)[:, :, 0, 0]
    return x


@torch.no_grad()
def daydream(acn: ACN, x: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Chains x -> c -> z ~ p(z|c) -> x ~ r(x|z) -> ...: [steps + 1, B, C, H, W], the real x first.

    With the VAE objective the chain is x -> c -> z ~ q(z|x) -> x ~ r(x|z) (its prior ignores c)."""
    frames = [x]
    for _ in range(steps):
        frames.append(decode(acn, acn.daydream_latent(acn.posterior(frames[-1]), generator), generator))
    return torch.stack(frames)


@torch.no_grad()
def prior_samples(acn: ACN, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images from scratch: z ~ p(z) (the unconditional prior; N(0, I) for the VAE), x ~ r(x|z)."""
    return decode(acn, acn.unconditional_prior(count).sample(generator), generator)
