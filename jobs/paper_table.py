"""The paper's Table 3 measured again on real data: ACN, VAE (the ACN's unit-variance posterior with
p(z) = N(0, I)) and standard VAE (sigma learnt) with the deconv and the gated PixelCNN decoders (code size 16, the same budget per dataset and decoder), beside pixel and PCA-16
baselines on the model's own input (binarised) and on greyscale. Each model is trained, then
evaluated: linear probe (standardised, run to convergence) and k-NN probe on the codes, test
nats/image with its KL, the ordered dataset bound.

    python jobs/paper_table.py [--rows mnist-digits/deconv ...] [--models acn vae] [--no-figures]

Saves `results/paper_table.json`: one object per row (`dataset`, `model`, `decoder`, `input`,
`linear`, `knn`, `nats`, `kl`, `ordered_nats`, `epochs`, `wall_s`, `command`, and the training
loss per epoch (the mean over the epoch's steps) with `loss_flat`: whether it moved less than 1%
over the last two epochs, our test of convergence); figures under `results/figures/<dataset>-<decoder>-<model>/`. Rerunning
some rows replaces only those. Every row's `command` reproduces it alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acn_dist.config import load  # noqa: E402
from acn_dist.errors import ConfigError  # noqa: E402
from acn_dist.evaluate.loading import resolve_checkpoint  # noqa: E402
from acn_dist.evaluate.run import evaluate  # noqa: E402
from acn_dist.runs.folder import RunFolder  # noqa: E402
from acn_dist.train.driver import train  # noqa: E402
from acn_dist.train.metrics import epoch_losses  # noqa: E402

# Budgets on a 2-core CPU machine (no GPU lent): mnist-digits/deconv 30 epochs (loss flat), Fashion-MNIST
# 20 epochs (greyscale, discretised logistic, residual encoder; ~80-140 min per model; the constant learning
# rate lets a 10-epoch run resume to 20), mnist-digits/PixelCNN 20 epochs (1,260 steps; the loss is flat
# there and not at 10) with the KL warm-up over the first 441 steps, the budget it had at 10 epochs (3
# spatially conditioned gated layers and the config's auxiliary reconstruction from z's map, ~40-50
# samples/s in one process, ~60-70 min per model).
# The Fashion-MNIST PixelCNN row is left to a GPU: `--rows fashion-mnist/pixelcnn`.
# MNIST itself (60,000 / 10,000, the paper's dataset): 10 epochs (4,690 steps; ~25-30 min of training per
# model, ~4 of evaluation; 5 epochs, the mnist-digits row's 1,875 steps and a quarter, were not flat).
ROWS: dict[str, tuple[str, list[str], list[str]]] = {
    "mnist/deconv": ("jobs/configs/mnist.yaml", ["train.epochs=10"], []),
    "mnist-digits/deconv": ("jobs/configs/mnist_digits.yaml", ["train.epochs=30"], []),
    "fashion-mnist/deconv": ("jobs/configs/fashion_mnist.yaml", ["train.epochs=20"], []),
    "mnist-digits/pixelcnn": ("jobs/configs/mnist_digits_pixelcnn.yaml", ["train.epochs=20", "train.kl_warmup_steps=441"],
                              ["eval.ordered_limit=2000", "eval.kl_samples=4"]),
    "fashion-mnist/pixelcnn": ("jobs/configs/fashion_mnist_pixelcnn.yaml", [],
                               ["eval.ordered_limit=2000", "eval.kl_samples=4"]),
}
DEFAULT_ROWS = ["mnist/deconv", "mnist-digits/deconv", "mnist-digits/pixelcnn", "fashion-mnist/deconv"]
# The models of a row: (label in the table, overrides). "VAE" is acn-method.md's plain VAE, the ACN
# with p(z) = N(0, I) (so q(z|x) = N(c, I) too); "standard VAE" learns sigma, as the paper's baseline.
MODELS: dict[str, tuple[str, list[str]]] = {
    "acn": ("ACN", ["model.objective=acn"]),
    "vae": ("VAE", ["model.objective=vae"]),
    "standard-vae": ("standard VAE", ["model.objective=vae", "model.posterior=learned"]),
    # the PixelCNN rows without the configs' auxiliary reconstruction: the method as the paper trains it
    "acn-no-auxiliary": ("ACN, no auxiliary", ["model.objective=acn", "model.pixelcnn_auxiliary=0"]),
    "vae-no-auxiliary": ("VAE, no auxiliary", ["model.objective=vae", "model.pixelcnn_auxiliary=0"]),
}
DEFAULT_MODELS = ["acn", "vae", "standard-vae"]
RUN_NAMES = {label: name for name, (label, _) in MODELS.items()}
FLAT = 0.01  # relative change of the mean training loss over the last two epochs under which we call it converged


def loss_by_epoch(storage: str, run_id: str, epochs: int) -> list[float]:
    """The mean training loss (nats/image) of each epoch, over every session of the run."""
    history = RunFolder.at(storage, run_id).history()
    last_step = max((int(row["step"]) for row in history), default=0)
    return [round(loss, 2) for loss in epoch_losses(history, max(last_step // epochs, 1))] if history else []


class Plan(NamedTuple):
    """One model of one row, as it will be trained and evaluated."""
    config_path: str
    dataset: str
    decoder: str
    model: str
    overrides: list[str]
    eval_settings: list[str]


def without_replaced(budget: list[str], extra: list[str]) -> list[str]:
    """The row's budget less the keys the run's --set gives again, so that the row's command names
    each setting once (`--set train.epochs=20` replaces the row's `train.epochs=10`)."""
    given = {setting.split("=", 1)[0] for setting in extra}
    return [setting for setting in budget if setting.split("=", 1)[0] not in given]


def first_bad_plan(plans: list[tuple[str, list[str]]]) -> str | None:
    """Every run's config loaded before any trains: the first that does not, as a one-line error
    (a typo in the last row's --set must not surface after hours of training)."""
    for config_path, overrides in plans:
        try:
            load(config_path, overrides)
        except ConfigError as error:
            return f"error: {error}"
    return None


def is_flat(losses: list[float]) -> bool | None:
    if len(losses) < 3:
        return None
    return abs(losses[-3] - losses[-1]) / abs(losses[-1]) < FLAT


def train_and_evaluate(config_path: str, overrides: list[str], eval_settings: list[str],
                       figures_on: bool) -> dict[str, Any]:
    """Train `config_path` with `overrides`, evaluate its last checkpoint; the run's figures and
    the command that reproduces it."""
    command = f"acn-dist train --config {config_path} " + " ".join(f"--set {o}" for o in overrides)
    print(f"\n== {command}", flush=True)
    started = time.perf_counter()
    summary = train(load(config_path, overrides))
    wall_s = time.perf_counter() - started
    settings = load(config_path, [*overrides, *eval_settings])
    metrics = evaluate(resolve_checkpoint(None, settings), overrides=settings, figures_on=figures_on, log=False)
    losses = loss_by_epoch(settings.train.storage_path, settings.train.run_id, settings.train.epochs)
    last = summary["history"][-1] if summary["history"] else {}
    return {"command": command, "wall_s": round(wall_s, 1), "metrics": metrics, "loss_by_epoch": losses,
            "loss_flat": is_flat(losses), "epochs": settings.train.epochs,
            "mean_samples_per_s": last.get("mean_samples_per_s"), "last_window": last}


def model_row(dataset: str, decoder: str, model: str, run: dict[str, Any]) -> dict[str, Any]:
    m = run["metrics"]
    return {"dataset": dataset, "model": MODELS[model][0], "decoder": decoder, "input": m["input"],
            "linear": m["linear_codes"], "linear_converged": m["linear_codes_converged"], "knn": m["knn_codes"],
            "nats": m["test_nats_per_image"], "kl": m["test_kl"], "ordered_nats": m.get("ordered_nats_per_image"),
            "epochs": run["epochs"], "wall_s": run["wall_s"], "mean_samples_per_s": run["mean_samples_per_s"],
            "loss_by_epoch": run["loss_by_epoch"], "loss_flat": run["loss_flat"], "command": run["command"]}


def baseline_rows(dataset: str, metrics: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """Pixel and PCA-16 rows for each input the evaluation probed (the model's own, and greyscale)."""
    rows = []
    for kind in ("binarised", "greyscale"):
        for name, model in ((f"pixels_{kind}", "pixels"), (f"pca16_{kind}", "PCA-16")):
            if f"linear_{name}" in metrics:
                rows.append({"dataset": dataset, "model": model, "decoder": None, "input": kind,
                             "linear": metrics[f"linear_{name}"],
                             "linear_converged": metrics[f"linear_{name}_converged"],
                             "knn": metrics[f"knn_{name}"], "nats": None, "kl": None, "ordered_nats": None,
                             "epochs": None, "command": command})
    return rows


def keep_figures(metrics: dict[str, Any], folder: Path) -> None:
    """Replace the row's figures with this run's; a run without figures leaves the old ones."""
    if not metrics.get("figures"):
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for figure in metrics.get("figures", []):
        shutil.copy(figure, folder)


def fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


DATASET_ORDER = ("mnist", "mnist-digits", "fashion-mnist")
MODEL_ORDER = ("ACN", "VAE", "standard VAE", "ACN, no auxiliary", "VAE, no auxiliary", "pixels", "PCA-16")


def reading_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """The table as a reader scans it: per dataset, the models of each decoder, then the baselines."""
    model = MODEL_ORDER.index(row["model"]) if row["model"] in MODEL_ORDER else len(MODEL_ORDER)
    dataset = DATASET_ORDER.index(row["dataset"]) if row["dataset"] in DATASET_ORDER else len(DATASET_ORDER)
    return dataset, row["dataset"], row["decoder"] is None, row["decoder"] or "", \
        model, row["input"]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | model | decoder | input | linear | k-NN | test nats/image (KL) | ordered nats/image "
             "| epochs (loss flat) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=reading_order):
        nats = "" if r["nats"] is None else f"{r['nats']:.1f} ({r['kl']:.1f})"
        epochs = "" if r["epochs"] is None else f"{r['epochs']} ({'yes' if r.get('loss_flat') else 'no'})"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['decoder'] or ''} | {r['input']} | "
                     f"{fmt(r['linear'], 3)} | {fmt(r['knn'], 3)} | {nats} | {fmt(r['ordered_nats'], 1)} | {epochs} |")
    return "\n".join(lines)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["dataset"], row["model"], row["decoder"], row["input"]


def save(out: Path, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace `fresh`'s rows in the table at `out` (read again now: another run of this script
    may have saved rows since this one started)."""
    rows = json.loads(out.read_text()) if out.is_file() else []
    replaced = {row_key(r) for r in fresh}
    rows = [r for r in rows if row_key(r) not in replaced] + fresh
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


def refresh_losses(rows: list[dict[str, Any]], storage: str) -> list[dict[str, Any]]:
    """The model rows with `loss_by_epoch` and `loss_flat` read again from their runs' logs (a row
    whose run is not under `storage`, e.g. in a fresh clone, is left as it was saved)."""
    fresh = []
    for r in rows:
        if r["epochs"] is None:
            continue
        losses = loss_by_epoch(storage, f"paper-{r['dataset']}-{r['decoder']}-{RUN_NAMES[r['model']]}", r["epochs"])
        if losses:
            fresh.append({**r, "loss_by_epoch": losses, "loss_flat": is_flat(losses)})
    return fresh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS),
                        help="the no-auxiliary models only where the config has the auxiliary (PixelCNN rows)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every row (e.g. train.epochs=1 for a quick check)")
    parser.add_argument("--storage", default="runs/paper")
    parser.add_argument("--out", default="results/paper_table.json")
    parser.add_argument("--no-figures", action="store_true",
                        help="metrics only (PixelCNN samples are drawn pixel by pixel: minutes on a CPU)")
    parser.add_argument("--refresh-losses", action="store_true",
                        help="train nothing: read every model row's loss per epoch again from its run's log")
    args = parser.parse_args()
    out = Path(args.out)
    if args.refresh_losses:
        rows = save(out, refresh_losses(json.loads(out.read_text()) if out.is_file() else [], args.storage))
        print(markdown(rows) + f"\nsaved {out}")
        return 0
    plans: list[Plan] = []
    for name in args.rows:
        config_path, budget, eval_settings = ROWS[name]
        dataset, decoder = name.split("/")
        for model in args.models:
            if model.endswith("-no-auxiliary") and load(config_path).model.pixelcnn_auxiliary == 0:
                print(f"error: --models {model} is the row without its config's auxiliary reconstruction; "
                      f"{config_path} ({name}) has none: drop it or pick a PixelCNN row", file=sys.stderr)
                return 2
            run_id = f"paper-{dataset}-{decoder}-{model}"
            overrides = [*without_replaced(budget, args.extra), *args.extra, *MODELS[model][1], f"train.run_id={run_id}",
                         f"train.storage_path={args.storage}", "train.checkpoint_every=100000"]
            plans.append(Plan(config_path, dataset, decoder, model, overrides, eval_settings))
    error = first_bad_plan([(plan.config_path, [*plan.overrides, *plan.eval_settings]) for plan in plans])
    if error:
        print(error, file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for config_path, dataset, decoder, model, overrides, eval_settings in plans:
        run = train_and_evaluate(config_path, overrides, eval_settings, not args.no_figures)
        keep_figures(run["metrics"], out.parent / "figures" / f"{dataset}-{decoder}-{model}")
        fresh = [model_row(dataset, decoder, model, run)]
        if model == args.models[0] and decoder == "deconv":  # baselines once per dataset
            fresh += baseline_rows(dataset, run["metrics"], run["command"].replace("train", "evaluate", 1))
        rows = save(out, fresh)
    print("\n" + markdown(rows))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
