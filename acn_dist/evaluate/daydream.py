"""Pictures from the decoder: its means beside its samples, daydream chains
x -> c -> z ~ p(z|c) -> x ~ r(x|z) -> ..., and samples from the unconditional prior p(z).

The decoder's mean (Bernoulli probabilities, the expected value of the discretised logistic) is
what a person reads; a sample is what the chain continues from. For the autoregressive gated
PixelCNN the mean of each pixel is given the sampled pixels before it (the probabilities the
sampler drew from).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from acn_dist.evaluate.figures import labelled_grid
from acn_dist.model.acn import ACN
from acn_dist.model.networks import GatedPixelCNN
from acn_dist.model.sampling import decode


@torch.no_grad()
def decode_with_mean(acn: ACN, z: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sample) of r(x|z) for each row of z: two [B, C, H, W] tensors in [0, 1]."""
    if isinstance(acn.decoder, GatedPixelCNN):
        sample = decode(acn, z, generator)
        return acn.likelihood.mean(acn.decoder(z, sample)), sample
    raw = acn.decoder(z)
    return acn.likelihood.mean(raw), acn.likelihood.sample(raw, generator)


@torch.no_grad()
def chains_with_means(acn: ACN, x: torch.Tensor, steps: int, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Daydream chains from the images x [B, C, H, W]: (means, samples), each [B, steps + 1, C, H, W]
    with the real image at step 0 of both; step t + 1 decodes z ~ p(z | c(sample t))."""
    means, samples = [x], [x]
    for _ in range(steps):
        mean, sample = decode_with_mean(acn, acn.daydream_latent(acn.posterior(samples[-1]), generator), generator)
        means.append(mean)
        samples.append(sample)
    return torch.stack(means, dim=1), torch.stack(samples, dim=1)


@torch.no_grad()
def prior_means_and_samples(acn: ACN, count: int, generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images from scratch: z ~ p(z) (the unconditional prior; N(0, I) for the VAE), then the
    decoder's (mean, sample) for each: two [count, C, H, W] tensors."""
    return decode_with_mean(acn, acn.unconditional_prior(count).sample(generator), generator)


def interleave(means: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """[R, S, ...] and [R, S, ...] -> [2R, S, ...]: a row of means above the row of its samples."""
    return np.stack([means, samples], axis=1).reshape(-1, *means.shape[1:])


def daydream_figure(means: np.ndarray, samples: np.ndarray, path: str | Path, title: str,
                    row_names: list[str] | None = None) -> Path:
    """Chains as rows (each chain's decoder means above its samples), columns labelled with the
    step number (step 0 = the starting image)."""
    chains, steps = means.shape[:2]
    names = row_names or [f"chain {i + 1}" for i in range(chains)]
    rows = [f"{name} {part}" for name in names for part in ("mean", "sample")]
    columns = ["start"] + [f"step {t}" for t in range(1, steps)]
    return labelled_grid(interleave(means, samples), path, title, rows, columns)


def prior_figure(means: np.ndarray, samples: np.ndarray, path: str | Path, title: str, per_row: int = 8) -> Path:
    """Prior samples in rows of `per_row`: each row of decoder means above the row of samples."""
    rows = len(means) // per_row
    shape = means.shape[1:]
    grids = interleave(means[:rows * per_row].reshape(rows, per_row, *shape),
                       samples[:rows * per_row].reshape(rows, per_row, *shape))
    return labelled_grid(grids, path, title, ["mean", "sample"] * rows)
