"""The measurements behind the defaults: short runs of named variants of one config, each trained
and evaluated on its codes (linear probe, k-NN, test nats/image, KL), saved to
`results/ablation.json` (one entry per study, dataset, variant, budget and seed; rerunning one replaces it).

    python jobs/ablation.py --study freshness [--config C (default: the study's own, CONFIGS)] [--epochs 5]
    python jobs/ablation.py --study collapse --config jobs/configs/mnist_digits_pixelcnn.yaml --epochs 10
    python jobs/ablation.py --study conditioning --config jobs/configs/mnist_digits_pixelcnn.yaml --epochs 2 \
        --set train.kl_warmup_steps=88
    python jobs/ablation.py --study init --config jobs/configs/mnist_digits.yaml --epochs 5
    python jobs/ablation.py --study context --config jobs/configs/mnist_digits_pixelcnn.yaml --epochs 3 \
        --set train.kl_warmup_steps=132 --set train.context_dropout_steps=132
    python jobs/ablation.py --study schedule --config jobs/configs/mnist_digits.yaml --epochs 10
    python jobs/ablation.py --study posterior --config jobs/configs/mnist_digits.yaml --epochs 10
    python jobs/ablation.py --study auxiliary --config jobs/configs/mnist_digits_pixelcnn.yaml --epochs 3 \
        --set train.kl_warmup_steps=132
    python jobs/ablation.py --study neighbours --config jobs/configs/fashion_mnist.yaml --epochs 3
    python jobs/ablation.py --study neighbours --variants acn-k-20 --epochs 20   # against the paper table's K = 5 rows
    python jobs/ablation.py --study neighbours --config jobs/configs/mnist_digits.yaml --variants acn-k-5 acn-k-20 --epochs 30
    python jobs/ablation.py --study augment --variants acn-shift-0 acn-shift-2 --epochs 30 --seeds 0 1 2  # a row each
    python jobs/ablation.py --study data --variants acn-train-2000 vae-train-2000 --epochs 120  # ~1,900 steps,
    python jobs/ablation.py --study data --variants acn-train-4000 vae-train-4000 --epochs 60   # as 8,000 at 30
    # a finished run evaluated again without training, its probes also fitted on 1,000 and 2,000 labels:
    python jobs/ablation.py --study augment --variants acn-shift-0 --seeds 0 --epochs 30 --probe-labels 1000 2000
    python jobs/ablation.py --study input --config jobs/configs/mnist_digits.yaml --variants greyscale-resnet \
        --epochs 30 --set model.init_code_std=1   # a --set replaces the variant's own setting of that key

Studies:
  freshness  where ĉ comes from: Algorithm 1 as written (exact: the batch's fresh codes are
             written, then searched), the same with the batch's own ids excluded from its
             neighbours, and the prefetch option with and without its warm start
  input      what the model sees and how much its code holds: binarised vs greyscale with the
             discretised logistic likelihood, the VGG-style vs the residual encoder
  collapse   posterior collapse with an autoregressive decoder: plain, KL warm-up, free bits,
             both; and the VAE beside each
  conditioning  how z reaches a gated PixelCNN decoder: a bias of every gate, the same at every
             pixel (global), or a deconv map of z with one bias per pixel (spatial, as the
             PixelVAE), with 6, 3 or 1 gated layers (fewer: a more local decoder); ACN and VAE,
             each with the config's KL warm-up
  init       how the encoder starts: PyTorch's init (codes ~1e-3 apart, lost in the unit noise of
             q(z|x)) or scaled on the first batch (LSUV) so that codes spread with std 1 or 3
  context    context dropout against collapse: a share (0.5, 0.8, 0.95; 0 for reference) of the gated
             PixelCNN's context pixels hidden, falling to none over train.context_dropout_steps
             (give it with --set); ACN and VAE, each with the config's KL warm-up
  schedule   the learning rate: constant at 1e-3 (Adam's usual), or a cosine from 1e-3 or 2e-3
             down to 0 over the run's planned steps; ACN and VAE
  posterior  q(z|x) = N(c, I), the paper's, or N(c, diag(sigma^2)) with sigma learnt (a standard
             VAE's); ACN and VAE
  auxiliary  an auxiliary reconstruction of x from the gated PixelCNN's map of z alone (no pixel
             context) in the training loss, weighted 0.25 or 1 (0 for reference), against collapse;
             ACN and VAE, each with the config's KL warm-up
  neighbours K, the neighbours ĉ is drawn from (1, 5: the default, 20): one neighbour makes the
             prior follow the code's nearest code; more make it cover a wider neighbourhood
  augment    training images moved by up to 2 or 4 pixels each way, a fresh offset per datum and epoch
             (0 for reference): 8,000 mnist-digits are an eighth of the paper's MNIST; ACN and VAE
  data       how much training data: 1,000, 2,000 or 4,000 of the 8,000 mnist-digits (data.train_count, a
             stratified draw, each inside the next; the test split whole; the probes trained on the codes
             of the data the model saw), at the same number of steps as the 8,000 at 30 epochs; ACN and VAE
Each variant: `acn-dist train --config C --set ... ` in one process (train.num_workers=0), then
`acn-dist evaluate` without figures or pixel baselines; the command is saved with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# a sibling script: jobs/ is on sys.path as this script's folder
from paper_table import first_bad_plan, train_and_evaluate, without_replaced

from acn_dist.config import load  # paper_table put the repository on sys.path
from acn_dist.evaluate.run import probes_by_labels

# Every variant names what it tests explicitly, so that a later change of a shipped config's defaults
# (Fashion-MNIST went greyscale, the PixelCNN configs got a KL warm-up) does not change the study.
BINARISED = ["data.binarize=dynamic"]
PLAIN = ["train.kl_warmup_steps=0", "train.free_bits=0"]
STUDIES: dict[str, dict[str, list[str]]] = {
    "freshness": {
        "exact": [*BINARISED, "codes.mode=exact"],
        "exact-exclude-batch": [*BINARISED, "codes.mode=exact", "codes.exclude_batch=true"],
        "prefetch-warm": [*BINARISED, "codes.mode=prefetch", "codes.prefetch_warm_epochs=1"],
        "prefetch-cold": [*BINARISED, "codes.mode=prefetch", "codes.prefetch_warm_epochs=0"],
    },
    "input": {
        "binarised-conv": ["data.binarize=dynamic", "model.encoder=conv"],
        "greyscale-conv": ["data.binarize=none", "model.encoder=conv"],
        "greyscale-resnet": ["data.binarize=none", "model.encoder=resnet"],
        "binarised-resnet": ["data.binarize=dynamic", "model.encoder=resnet"],
    },
    "collapse": {
        "acn-plain": ["model.objective=acn", *PLAIN],
        "acn-warmup": ["model.objective=acn", "train.free_bits=0", "train.kl_warmup_steps=1000"],
        "acn-freebits": ["model.objective=acn", "train.kl_warmup_steps=0", "train.free_bits=0.5"],
        "acn-warmup-freebits": ["model.objective=acn", "train.kl_warmup_steps=1000", "train.free_bits=0.5"],
        "vae-plain": ["model.objective=vae", *PLAIN],
        "vae-warmup": ["model.objective=vae", "train.free_bits=0", "train.kl_warmup_steps=1000"],
        "vae-freebits": ["model.objective=vae", "train.kl_warmup_steps=0", "train.free_bits=0.5"],
    },
    "conditioning": {
        f"{objective}-{conditioning}-{layers}": [f"model.objective={objective}",
                                                 f"model.pixelcnn_conditioning={conditioning}",
                                                 f"model.pixelcnn_layers={layers}"]
        for objective in ("acn", "vae") for conditioning in ("global", "spatial") for layers in (6, 3, 1)
    },
    "init": {
        f"{objective}-{name}": [f"model.objective={objective}", f"model.init_code_std={std}"]
        for objective in ("acn", "vae") for name, std in (("pytorch", 0), ("codes-1", 1.0), ("codes-3", 3.0))
    },
    "context": {
        f"{objective}-hide-{rate}": [f"model.objective={objective}", f"train.context_dropout={rate}"]
        for objective in ("acn", "vae") for rate in (0.5, 0.8, 0.95, 0)
    },
    "schedule": {
        f"{objective}-{name}": [f"model.objective={objective}", f"train.lr={lr}", f"train.lr_schedule={schedule}"]
        for objective in ("acn", "vae")
        for name, lr, schedule in (("constant", 1e-3, "constant"), ("cosine", 1e-3, "cosine"), ("cosine-2e-3", 2e-3, "cosine"))
    },
    "posterior": {
        f"{objective}-{posterior}": [f"model.objective={objective}", f"model.posterior={posterior}"]
        for objective in ("acn", "vae") for posterior in ("unit", "learned")
    },
    "auxiliary": {
        f"{objective}-auxiliary-{weight}": [f"model.objective={objective}", f"model.pixelcnn_auxiliary={weight}"]
        for objective in ("acn", "vae") for weight in (0.25, 1, 0)
    },
    "neighbours": {f"acn-k-{k}": ["model.objective=acn", f"codes.k={k}"] for k in (1, 5, 20)},
    "augment": {
        f"{objective}-shift-{pixels}": [f"model.objective={objective}", f"data.augment_shift={pixels}"]
        for objective in ("acn", "vae") for pixels in (0, 2, 4)
    },
    "data": {
        f"{objective}-train-{count}": [f"model.objective={objective}", f"data.train_count={count}",
                                       f"data.dataset=mnist-digits-train-{count}"]
        for objective in ("acn", "vae") for count in (1000, 2000, 4000)
    },
}
# Settings a later default changed, named by the studies measured before the change, so that rerunning
# a study runs what was measured: PyTorch's init (before model.init_code_std) and no auxiliary
# reconstruction (before the PixelCNN configs had it).
MEASURED_BEFORE: dict[str, tuple[str, ...]] = {
    "model.init_code_std=0": ("freshness", "input", "collapse", "conditioning", "context"),
    "model.pixelcnn_auxiliary=0": ("freshness", "input", "collapse", "conditioning", "init", "context", "schedule",
                                   "posterior"),
}
STUDIES = {study: {variant: [*overrides, *(setting for setting, studies in MEASURED_BEFORE.items() if study in studies)]
                   for variant, overrides in variants.items()} for study, variants in STUDIES.items()}
# The config each study was measured with (the init study also ran on the PixelCNN and Fashion-MNIST configs).
CONFIGS = {"freshness": "jobs/configs/fashion_mnist.yaml", "input": "jobs/configs/fashion_mnist.yaml",
           "collapse": "jobs/configs/mnist_digits_pixelcnn.yaml", "conditioning": "jobs/configs/mnist_digits_pixelcnn.yaml",
           "init": "jobs/configs/mnist_digits.yaml", "context": "jobs/configs/mnist_digits_pixelcnn.yaml",
           "schedule": "jobs/configs/mnist_digits.yaml", "posterior": "jobs/configs/mnist_digits.yaml",
           "auxiliary": "jobs/configs/mnist_digits_pixelcnn.yaml", "neighbours": "jobs/configs/fashion_mnist.yaml",
           "augment": "jobs/configs/mnist_digits.yaml", "data": "jobs/configs/mnist_digits.yaml"}
EVALUATION = ["eval.baselines=false", "eval.ordered_limit=2000", "eval.kl_samples=4"]


def variant_settings(config_path: str, study: str, variant: str, epochs: int, storage: str,
                     extra: list[str], seed: int | None = None) -> tuple[list[str], list[str]]:
    """The variant's own settings that train (a key the run's --set gives again, e.g. an old default of
    MEASURED_BEFORE, is the --set's: the row and its command name each key once, with the value that
    trained), and all it trains with: those, the --set, the seed (train.seed, when given) and budget,
    one process, its own run (a seed given in its id)."""
    if seed is not None:
        extra = [*without_replaced(extra, [f"train.seed={seed}"]), f"train.seed={seed}"]
    overrides = without_replaced(STUDIES[study][variant], extra)
    seeds = [setting.split("=", 1)[1] for setting in extra if setting.startswith("train.seed=")]
    run_id = f"ablation-{study}-{Path(config_path).stem}-{variant}" + (f"-seed{seeds[-1]}" if seeds else "")
    return overrides, [*overrides, *extra, f"train.epochs={epochs}", "train.num_workers=0", f"train.run_id={run_id}",
                       f"train.storage_path={storage}", "train.checkpoint_every=1000000", "tracking.enabled=false"]


def row_key(row: dict) -> tuple:
    """What a row measured: rerunning it replaces it (rows from before seeds trained with seed 0)."""
    return row["study"], row["config"], row["variant"], row["epochs"], row.get("seed", 0)


def run_variant(config_path: str, study: str, variant: str, overrides: list[str], settings: list[str],
                epochs: int, probe_labels: Sequence[int] = ()) -> dict:
    seed = load(config_path, settings).train.seed
    print(f"\n== {study}/{variant} seed {seed}", flush=True)
    run = train_and_evaluate(config_path, settings, EVALUATION, figures_on=False)
    metrics, last = run["metrics"], run["last_window"]
    fewer = [count for count in probe_labels if count < metrics["train_count"]]  # else: the row's own probes
    by_labels = probes_by_labels(metrics["checkpoint"], load(config_path, [*settings, *EVALUATION]), fewer) if fewer else {}
    return {"study": study, "variant": variant, "config": config_path, "overrides": overrides, "epochs": epochs,
            "seed": seed,
            "command": run["command"], "train_seconds": run["wall_s"],
            "mean_samples_per_s": run["mean_samples_per_s"],
            "linear": metrics.get("linear_codes"), "linear_converged": metrics.get("linear_codes_converged"),
            "knn": metrics.get("knn_codes"), "nats": metrics["test_nats_per_image"], "kl": metrics["test_kl"],
            "probe_labels": {str(count): {"linear": rows["linear_codes"], "linear_converged": rows["linear_codes_converged"],
                                          "knn": rows["knn_codes"]} for count, rows in by_labels.items()},
            "train_loss_by_epoch": run["loss_by_epoch"], "same_batch_share": last.get("same_batch_share"),
            "staleness": last.get("staleness")}


# What a run's training measured: a rerun of a finished run (no step trained, e.g. to add --probe-labels)
# keeps them from the row it replaces.
TRAINING_MEASURES = ("train_seconds", "mean_samples_per_s", "same_batch_share", "staleness")


def replacing(old: dict | None, row: dict) -> dict:
    """The row to save in place of `old` (the same row_key): a rerun that trained nothing keeps the
    training's own measures."""
    if old is None or row["mean_samples_per_s"] is not None:
        return row
    return {**row, **{key: old.get(key) for key in TRAINING_MEASURES}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=sorted(STUDIES))
    parser.add_argument("--config", help="default: the config the study was measured with (CONFIGS)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", nargs="+", help="a subset of the study's variants")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="train each variant once per seed (train.seed: the model's init and z's noise; "
                             "codes.seed and data.seed stay), one row each; default: the config's")
    parser.add_argument("--probe-labels", type=int, nargs="+", default=[], metavar="N",
                        help="also fit the codes' probes on N labelled training data (eval.probe_labels; each "
                             "N under the run's training data), in the row's probe_labels; rerunning a "
                             "finished run adds them without training")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every variant (e.g. the collapse study's warm-up length)")
    parser.add_argument("--storage", default="runs/ablation")
    parser.add_argument("--out", default="results/ablation.json")
    args = parser.parse_args()
    variants = STUDIES[args.study]
    config_path = args.config or CONFIGS[args.study]
    chosen = args.variants or list(variants)
    unknown = sorted(set(chosen) - set(variants))
    if unknown:
        print(f"error: unknown variants {unknown} of study {args.study!r}; it has {list(variants)}", file=sys.stderr)
        return 2
    if any(count < 1 for count in args.probe_labels):
        print(f"error: --probe-labels {args.probe_labels}: each is a count of labelled training data, >= 1",
              file=sys.stderr)
        return 2
    plans = {(variant, seed): variant_settings(config_path, args.study, variant, args.epochs, args.storage, args.extra,
                                               seed)
             for variant in chosen for seed in (args.seeds or [None])}
    error = first_bad_plan([(config_path, [*settings, *EVALUATION]) for _, settings in plans.values()])
    if error:
        print(error, file=sys.stderr)
        return 2
    out = Path(args.out)
    for (variant, _), (overrides, settings) in plans.items():
        row = run_variant(config_path, args.study, variant, overrides, settings, args.epochs, args.probe_labels)
        rows = json.loads(out.read_text()) if out.is_file() else []
        row = replacing(next((r for r in rows if row_key(r) == row_key(row)), None), row)
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if row_key(r) != row_key(row)]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([*rows, row], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
