"""`acn-dist sample` and `acn-dist daydream`: pictures drawn from a trained model, as PNG grids.

- Prior samples: z ~ p(z), the unconditional prior (N(0, I) for the VAE), decoded; the decoder's
  means shown above its samples.
- Daydream chains: from chosen datum ids or image files (`sample --from`), or from random test
  images (`daydream`): x -> c -> z ~ p(z|c) -> x ~ r(x|z) -> ..., one chain per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from acn_dist.errors import EvaluationError
from acn_dist.evaluate.daydream import (
    chains_with_means,
    daydream_figure,
    prior_figure,
    prior_means_and_samples,
)
from acn_dist.evaluate.figures import label_name
from acn_dist.runs.storage import AnyPath, output_folder
from acn_dist.use.trained import Query, TrainedRun


def model_title(run: TrainedRun) -> str:
    return f"run {run.run_id} (step {run.step}, {run.acn.objective.upper()})"


def prior_samples_png(run: TrainedRun, count: int, seed: int, out: Path) -> Path:
    """`count` samples from the unconditional prior, rounded up to whole rows of 8 (means above
    samples): out/prior_samples.png."""
    generator = torch.Generator().manual_seed(seed)
    per_row = min(8, count)
    means, samples = prior_means_and_samples(run.acn, -(-count // per_row) * per_row, generator)
    return prior_figure(means.numpy(), samples.numpy(), out / "prior_samples.png",
                        f"{model_title(run)}: samples from the unconditional prior p(z)", per_row)


def chain_names(run: TrainedRun, queries: list[Query], labels: np.ndarray) -> list[str]:
    names = []
    for query, label in zip(queries, labels):
        if query.datum_id is not None:
            names.append(f"id {query.datum_id} ({label_name(int(label), run.names)}):")
        else:
            names.append(f"{query.image_file.name}:")
    return names


def daydream_png(run: TrainedRun, x: torch.Tensor, names: list[str], steps: int, seed: int, out: Path) -> Path:
    """Chains of `steps` steps from the images x: out/daydream.png (means above samples) and
    out/daydream.npy (the samples, [chains, steps + 1, C, H, W])."""
    generator = torch.Generator().manual_seed(seed)
    means, samples = chains_with_means(run.acn, x, steps, generator)
    np.save(out / "daydream.npy", samples.numpy())
    return daydream_figure(means.numpy(), samples.numpy(), out / "daydream.png",
                           f"{model_title(run)}: daydream chains", names)


def sample(run: TrainedRun, out: AnyPath, count: int, queries: list[Query], steps: int, seed: int,
           resize: bool = False) -> list[AnyPath]:
    """Prior samples, and daydream chains from `queries` when any; returns the PNGs written. Every
    query is checked (ids, files) before anything is written."""
    if count < 0 or steps < 1:
        raise EvaluationError(f"--count {count} / --steps {steps}: give a count >= 0 and at least 1 step")
    chains = run.query_images(queries, resize) if queries else None
    with output_folder(out) as folder:
        written = [prior_samples_png(run, count, seed, folder)] if count else []
        if chains is not None:
            _, x, labels = chains
            written.append(daydream_png(run, x, chain_names(run, queries, labels), steps, seed, folder))
    return [out / path.name for path in written]


def daydream_from_test(run: TrainedRun, out: AnyPath) -> AnyPath:
    """`eval.daydream_chains` chains of `eval.daydream_steps` images (the real one first) from
    random test images, seeded by `eval.seed`."""
    settings = run.config.eval
    test = run.manifest["splits"]["test"]
    count = min(settings.daydream_chains, test["count"])
    picks = np.random.default_rng(settings.seed).choice(test["count"], count, replace=False) + test["id_start"]
    queries = [Query(str(i), datum_id=int(i)) for i in picks]
    _, x, labels = run.query_images(queries)
    with output_folder(out) as folder:
        written = daydream_png(run, x, chain_names(run, queries, labels), settings.daydream_steps - 1,
                               settings.seed, folder)
    return out / written.name
