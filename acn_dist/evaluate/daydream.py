"""Daydream chains on their own: x -> c -> z ~ p(z|c) -> x ~ r(x|z) -> ..., from real test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from acn_dist.config import Config
from acn_dist.evaluate.figures import save_grid
from acn_dist.evaluate.loading import load_trained, with_settings
from acn_dist.evaluate.run import split_tensors
from acn_dist.model.sampling import daydream


def daydream_chains(checkpoint: str | Path, settings: Config, out: str | Path | None = None) -> Path:
    """`eval.daydream_chains` chains of `eval.daydream_steps` images (the real one first), seeded by
    `eval.seed`; writes `daydream.png` and `daydream.npy` [chains, steps, C, H, W]."""
    trained = load_trained(checkpoint)
    acn, config = trained.acn, with_settings(trained.config, settings)
    out = Path(out) if out else Path(checkpoint).parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    _, test_x, _, _ = split_tensors(config, "test")
    picks = np.random.default_rng(config.eval.seed).choice(len(test_x), config.eval.daydream_chains, replace=False)
    generator = torch.Generator().manual_seed(config.eval.seed)
    chains = daydream(acn, test_x[picks], config.eval.daydream_steps - 1, generator).transpose(0, 1).numpy()
    np.save(out / "daydream.npy", chains)
    return save_grid(chains, out / "daydream.png")
