"""`acn-dist evaluate`: from a checkpoint (or a run id), the paper's measurements and figures.

Codes (encoder means) of the train and test splits; the linear probe on codes vs pixels vs PCA-16
and a k-NN probe; test-set compression and the ordered dataset bound; PCA of test codes,
reconstructions, daydream chains and prior samples. Writes `metrics.json`, `report.md` and PNGs
into `<run>/eval/` (or `--out`), and logs them into the training run's MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acn_dist.config import Config
from acn_dist.data.binarize import binarize
from acn_dist.data.reader import ShardLoader
from acn_dist.data.shards import dataset_folder
from acn_dist.errors import EvaluationError
from acn_dist.evaluate import compression, figures, probe
from acn_dist.evaluate.loading import check_dataset, load_trained, resolve_checkpoint, with_settings
from acn_dist.model.acn import ACN
from acn_dist.model.networks import GatedPixelCNN
from acn_dist.model.sampling import daydream, decode, prior_samples

__all__ = ["EvaluationError", "evaluate", "resolve_checkpoint", "split_tensors"]


def split_tensors(config: Config, split: str) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    """(ids, x [N, C, H, W] float, labels, raw uint8 images) of a whole split; binarised data use the
    fixed seeded (static) binarisation for evaluation."""
    loader = ShardLoader(dataset_folder(config.data), split, batch_size=1, workers=0)
    ids, images, labels = loader.arrays()
    mode = "none" if config.data.binarize == "none" else "static"
    x = binarize(images, ids, mode, config.data.seed)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return ids, torch.from_numpy(np.ascontiguousarray(x)), labels, images


@torch.no_grad()
def encode_all(acn: ACN, x: torch.Tensor, batch_size: int) -> np.ndarray:
    return torch.cat([acn.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


@torch.no_grad()
def reconstructions(acn: ACN, x: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """[2, n, C, H, W]: the images, and x ~ r(x|z = c) (the mean for independent-pixel decoders)."""
    code = acn.encode(x)
    if isinstance(acn.decoder, GatedPixelCNN):
        rebuilt = decode(acn, code, generator)
    else:
        rebuilt = acn.likelihood.mean(acn.decoder(code))
    return torch.stack([x, rebuilt]).numpy()


def evaluate(checkpoint: str | Path, out: str | Path | None = None, overrides: Config | None = None,
             log: bool = True, figures_on: bool = True, dataset: str | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint; returns the metrics (also in `<out>/metrics.json`). `dataset`: the
    dataset the user named, refused unless it is the one the checkpoint was trained on."""
    torch.manual_seed(0)
    trained = load_trained(checkpoint)
    acn, config = trained.acn, trained.config
    if overrides is not None:  # evaluation settings and data location may differ from training
        config = with_settings(config, overrides)
    check_dataset(trained, config, dataset)
    settings = config.eval
    out = Path(out) if out else Path(checkpoint).parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _, train_x, train_y, train_images = split_tensors(config, "train")
    _, test_x, test_y, test_images = split_tensors(config, "test")
    train_codes = encode_all(acn, train_x, settings.batch_size)
    test_codes = encode_all(acn, test_x, settings.batch_size)
    metrics: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "objective": acn.objective,
                               "decoder": config.model.decoder, "dataset": config.data.dataset,
                               "train_count": len(train_x), "test_count": len(test_x)}
    if settings.probe:
        metrics.update(probe_table(config, train_codes, train_x, train_images, train_y, test_codes, test_x,
                                   test_images, test_y))
    metrics.update(compression.test_set_compression(acn, train_codes, test_x, test_codes, config.codes.k,
                                                    settings.kl_samples, settings.seed, settings.batch_size))
    limit = settings.ordered_limit or len(train_x)
    bound, order = compression.ordered_bound(acn, train_x[:limit], train_codes[:limit], settings.ordered_graph_k,
                                             settings.kl_samples, settings.seed, settings.batch_size)
    metrics.update(bound)
    np.save(out / "ordering.npy", order)
    if figures_on:
        metrics["figures"] = write_figures(acn, config, test_x, test_y, test_codes, out)
    metrics["eval_seconds"] = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.md").write_text(report(metrics))
    if log:
        log_to_mlflow(config, metrics, out)
    return metrics


def model_input(config: Config) -> str:
    """What the model sees: `binarised` or `greyscale` images."""
    return "greyscale" if config.data.binarize == "none" else "binarised"


def probe_table(config: Config, train_codes: np.ndarray, train_x: torch.Tensor, train_images: np.ndarray,
                train_y: np.ndarray, test_codes: np.ndarray, test_x: torch.Tensor, test_images: np.ndarray,
                test_y: np.ndarray) -> dict[str, Any]:
    """The paper's Table 3 rows on one split: codes, then pixels and PCA-16 on the model's own input
    (and greyscale beside a binarised input), each with the linear and the k-NN probe."""
    settings = config.eval
    args = (settings.probe_max_iter, settings.knn_k, settings.seed)
    kind = model_input(config)
    rows: dict[str, Any] = {"input": kind, **probe.probe_rows("codes", train_codes, train_y, test_codes, test_y, *args)}
    if not settings.baselines:
        return rows
    rows.update(probe.baseline_rows(kind, train_x.numpy(), train_y, test_x.numpy(), test_y, *args))
    if kind == "binarised":
        rows.update(probe.baseline_rows("greyscale", train_images.astype(np.float32) / 255, train_y,
                                        test_images.astype(np.float32) / 255, test_y, *args))
    return rows


def write_figures(acn: ACN, config: Config, test_x: torch.Tensor, test_y: np.ndarray, test_codes: np.ndarray,
                  out: Path) -> list[str]:
    settings = config.eval
    generator = torch.Generator().manual_seed(settings.seed)
    picks = np.random.default_rng(settings.seed).choice(len(test_x), max(settings.daydream_chains, 8), replace=False)
    written = [figures.pca_plot(test_codes, test_y, out / "pca_test_codes.png",
                                f"{acn.objective.upper()} test codes, first two principal components")]
    written.append(figures.save_grid(reconstructions(acn, test_x[picks[:8]], generator), out / "reconstructions.png"))
    chains = daydream(acn, test_x[picks[:settings.daydream_chains]], settings.daydream_steps - 1, generator)
    written.append(figures.save_grid(chains.transpose(0, 1).numpy(), out / "daydream.png"))
    samples = prior_samples(acn, 64, generator).reshape(8, 8, *acn.image_shape)
    written.append(figures.save_grid(samples.numpy(), out / "prior_samples.png"))
    return [str(path) for path in written]


def report(metrics: dict[str, Any]) -> str:
    rows = [(key, value) for key, value in metrics.items() if isinstance(value, float)]
    lines = [f"# Evaluation of {metrics['objective'].upper()} ({metrics['decoder']} decoder) on {metrics['dataset']}",
             "", f"Checkpoint: `{metrics['checkpoint']}`", "", "| measure | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in rows]
    if metrics.get("figures"):
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in metrics["figures"]]]
    return "\n".join(lines) + "\n"


def log_to_mlflow(config: Config, metrics: dict[str, Any], out: Path) -> None:
    from acn_dist.tracking import Tracker

    tracker = Tracker(config)
    if tracker.start(config) is None:
        return
    tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=0)
    for path in sorted(out.iterdir()):
        if path.suffix in (".png", ".md", ".json"):
            tracker.log_artifact(path, "eval")
    tracker.finish()
