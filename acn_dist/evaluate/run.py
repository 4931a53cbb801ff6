"""`acn-dist evaluate`: from a checkpoint (or a run id), the paper's measurements and figures.

Codes (encoder means) of the train and test splits; the linear probe on codes vs pixels vs PCA-16
and a k-NN probe; test-set compression and the ordered dataset bound; PCA of test codes,
reconstructions (decoder means beside samples), daydream chains, prior samples and the nearest
training data of test codes. Writes `metrics.json`, `report.md` and PNGs
into `<run>/eval/` (or `--out`), and logs them into the training run's MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from acn_dist.config import Config
from acn_dist.data.binarize import binarize
from acn_dist.data.reader import ShardLoader
from acn_dist.data.shards import dataset_folder
from acn_dist.errors import EvaluationError
from acn_dist.evaluate import compression, figures, probe
from acn_dist.evaluate.daydream import (
    chains_with_means,
    daydream_figure,
    decode_with_mean,
    prior_figure,
    prior_means_and_samples,
)
from acn_dist.evaluate.loading import check_dataset, load_trained, resolve_checkpoint, with_settings
from acn_dist.model.acn import ACN
from acn_dist.runs.storage import absolute, location, output_folder

__all__ = ["EvaluationError", "evaluate", "probes_by_labels", "resolve_checkpoint", "split_tensors"]


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


def encoded_split(acn: ACN, config: Config, split: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(x, labels, raw images, codes) of a whole split, as `split_tensors` reads it."""
    _, x, labels, images = split_tensors(config, split)
    return x, labels, images, encode_all(acn, x, config.eval.batch_size)


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
    destination = location(out) if out else location(checkpoint).parent.parent / "eval"
    with output_folder(destination) as folder:  # a bucket's eval folder is filled locally, then uploaded
        metrics = measure(acn, config, absolute(checkpoint), folder, figures_on)
        if "figures" in metrics:
            metrics["figures"] = [str(destination / Path(p).name) for p in metrics["figures"]]
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (folder / "report.md").write_text(report(metrics))
        if log:
            log_to_mlflow(config, metrics, folder)
    return metrics


def probes_by_labels(checkpoint: str | Path, settings: Config, counts: list[int]) -> dict[int, dict[str, Any]]:
    """The codes' probes fitted on each count of labelled training data (`eval.probe_labels`; the
    codes encoded once): for each count, the linear and k-NN accuracies and whether the linear
    probe converged. Writes nothing."""
    trained = load_trained(checkpoint)
    config = with_settings(trained.config, settings)
    check_dataset(trained, config)
    train_x, train_y, train_images, train_codes = encoded_split(trained.acn, config, "train")
    test_x, test_y, test_images, test_codes = encoded_split(trained.acn, config, "test")
    probe_only = dataclasses.replace(config.eval, baselines=False)
    return {count: probe_table(dataclasses.replace(config, eval=dataclasses.replace(probe_only, probe_labels=count)),
                               train_codes, train_x, train_images, train_y, test_codes, test_x, test_images, test_y)
            for count in counts}


def measure(acn: ACN, config: Config, checkpoint: str, out: Path, figures_on: bool) -> dict[str, Any]:
    """Every figure of `evaluate` into `out` (ordering.npy, PNGs); returns the metrics."""
    settings = config.eval
    started = time.perf_counter()
    train_x, train_y, train_images, train_codes = encoded_split(acn, config, "train")
    test_x, test_y, test_images, test_codes = encoded_split(acn, config, "test")
    metrics: dict[str, Any] = {"checkpoint": checkpoint, "objective": acn.objective,
                               "decoder": config.model.decoder, "dataset": config.data.dataset,
                               "train_count": len(train_x), "test_count": len(test_x)}
    if settings.probe:
        metrics["knn_k"] = settings.knn_k
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
        metrics["figures"] = write_figures(acn, config, test_x, test_y, test_codes, out,
                                           (train_images, train_codes, test_images))
    metrics["eval_seconds"] = time.perf_counter() - started
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
    labelled = probe.labelled_draw(train_y, settings.probe_labels, settings.seed)
    train_codes, train_x, train_images, train_y = (train_codes[labelled], train_x[labelled], train_images[labelled],
                                                   train_y[labelled])
    rows: dict[str, Any] = {"input": kind, "probe_labels": len(labelled),
                            **probe.probe_rows("codes", train_codes, train_y, test_codes, test_y, *args)}
    if not settings.baselines:
        return rows
    rows.update(probe.baseline_rows(kind, train_x.numpy(), train_y, test_x.numpy(), test_y, *args))
    if kind == "binarised" and settings.greyscale_baselines:
        rows.update(probe.baseline_rows("greyscale", train_images.astype(np.float32) / 255, train_y,
                                        test_images.astype(np.float32) / 255, test_y, *args))
    return rows


def write_figures(acn: ACN, config: Config, test_x: torch.Tensor, test_y: np.ndarray, test_codes: np.ndarray,
                  out: Path, raw: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[str]:
    """The evaluation's figures (PNG, enlarged, labelled) in `out`; returns their paths. With `raw`
    = (train images uint8, train codes, test images uint8) also the nearest training data of test codes."""
    settings = config.eval
    generator = torch.Generator().manual_seed(settings.seed)
    names = figures.class_names(config.data.dataset, max(int(test_y.max()) + 1, 10) if len(test_y) else 10)
    model = f"{acn.objective.upper()} ({config.model.decoder} decoder) on {config.data.dataset}"
    picks = np.random.default_rng(settings.seed).choice(len(test_x), max(settings.daydream_chains, 8), replace=False)
    shown = [figures.label_name(int(test_y[i]), names) for i in picks]
    written = [figures.pca_plot(test_codes, test_y, out / "pca_test_codes.png",
                                f"{model}: test codes, first two principal components", names)]
    mean, sample = decode_with_mean(acn, acn.encode(test_x[picks[:8]]), generator)
    written.append(figures.labelled_grid(torch.stack([test_x[picks[:8]], mean, sample]).numpy(),
                                         out / "reconstructions.png", f"{model}: reconstructions from z = code",
                                         ["data", "decoder mean", "sample"], shown[:8]))
    means, samples = chains_with_means(acn, test_x[picks[:settings.daydream_chains]], settings.daydream_steps - 1,
                                       generator)
    written.append(daydream_figure(means.numpy(), samples.numpy(), out / "daydream.png", f"{model}: daydream chains",
                                   [f"#{i + 1} {name}:" for i, name in enumerate(shown)]))
    means, samples = prior_means_and_samples(acn, 32, generator)
    written.append(prior_figure(means.numpy(), samples.numpy(), out / "prior_samples.png",
                                f"{model}: samples from the unconditional prior p(z)"))
    if raw is not None:
        train_images, train_codes, test_images = raw
        written.append(neighbours_figure(test_images[picks[:8]], test_codes[picks[:8]], train_images, train_codes,
                                         config.codes.k, shown[:8], out / "test_neighbours.png", model))
    return [str(path) for path in written]


def neighbours_figure(images: np.ndarray, codes: np.ndarray, train_images: np.ndarray, train_codes: np.ndarray,
                      k: int, names: list[str], path: Path, model: str) -> Path:
    """Each test image (a row) beside its K nearest training data by code (Euclidean), shown as
    the data are (greyscale), not as binarised model input."""
    _, nearest = faiss.knn(np.ascontiguousarray(codes, np.float32), np.ascontiguousarray(train_codes, np.float32), k)
    rows = np.concatenate([images[:, None], train_images[nearest]], axis=1).astype(np.float32) / 255
    images = rows[:, :, None] if rows.ndim == 4 else rows.transpose(0, 1, 4, 2, 3)  # [Q, 1 + K, C, H, W]
    return figures.labelled_grid(images, path, f"{model}: K nearest training data of test codes",
                                 names, ["test image", *[f"neighbour {i + 1}" for i in range(k)]])


# Human names of the measures in metrics.json (probe rows are named by `measure_name`).
FEATURES = {"codes": "codes", "pixels_binarised": "binarised pixels", "pca16_binarised": "PCA-16 of binarised pixels",
            "pixels_greyscale": "greyscale pixels", "pca16_greyscale": "PCA-16 of greyscale pixels"}
MEASURES = {
    "test_nats_per_image": "Test nats/image (KL + reconstruction)", "test_kl": "Test KL (nats/image)",
    "test_reconstruction": "Test reconstruction (nats/image)", "test_bits_per_dim": "Test bits/dim",
    "ordered_nats_per_image": "Ordered dataset bound (nats/image)", "ordered_kl": "Ordered bound KL (nats/image)",
    "ordered_reconstruction": "Ordered bound reconstruction (nats/image)",
    "ordered_bits_per_dim": "Ordered dataset bound (bits/dim)", "ordered_jumps": "Jumps in the ordering (count)",
    "ordered_count": "Data in the ordered bound (count)", "eval_seconds": "Evaluation time (s)",
}


def measure_name(key: str, knn_k: int | None = None) -> str:
    """"linear_codes" -> "Linear probe accuracy (codes)"; "test_kl" -> "Test KL (nats/image)"."""
    probe_kind, _, features = key.partition("_")
    if probe_kind in ("linear", "knn") and features in FEATURES:
        what = "Linear probe accuracy" if probe_kind == "linear" else f"k-NN accuracy{f' (k={knn_k})' if knn_k else ''}"
        return f"{what} ({FEATURES[features]})"
    return MEASURES.get(key, key)


def measure_value(key: str, metrics: dict[str, Any]) -> str:
    """A measure as a person reads it: accuracies in %, counts whole, the rest to two decimals."""
    value = metrics[key]
    if key.startswith(("linear_", "knn_")):
        converged = metrics.get(f"{key}_converged", True)
        return f"{100 * value:.1f} %" + ("" if converged else " (solver did not converge)")
    if key.endswith(("_count", "_jumps")):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def report(metrics: dict[str, Any]) -> str:
    """report.md: what was evaluated, every measure by its human name, and the figures."""
    rows = [key for key, value in metrics.items() if isinstance(value, float)]
    lines = [f"# Evaluation of {metrics['objective'].upper()} ({metrics['decoder']} decoder) on {metrics['dataset']}",
             "", f"Checkpoint: `{metrics['checkpoint']}`", "",
             f"{metrics['train_count']:,} training and {metrics['test_count']:,} test images; the model and the "
             f"pixel baselines see {metrics.get('input', 'its')} images. Accuracies are on the test split"
             + (f", the probes fitted on {metrics['probe_labels']:,} labelled training images (eval.probe_labels)"
                if metrics.get("probe_labels", metrics["train_count"]) < metrics["train_count"] else "")
             + "; nats are per test image (natural-log code length).", "", "| Measure | Value |", "|---|---|"]
    lines += [f"| {measure_name(key, metrics.get('knn_k'))} | {measure_value(key, metrics)} |" for key in rows]
    if metrics.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).name})\n" for p in metrics["figures"]]
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
