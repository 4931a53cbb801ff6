"""The measurements behind the defaults: short runs of named variants of one config, each trained
and evaluated on its codes (linear probe, k-NN, test nats/image, KL), saved to
`results/ablation.json` (one entry per study, dataset and variant; rerunning one replaces it).

    python jobs/ablation.py --study freshness [--config jobs/configs/fashion_mnist.yaml] [--epochs 5]
    python jobs/ablation.py --study collapse --config jobs/configs/mnist_digits_pixelcnn.yaml --epochs 10

Studies:
  freshness  where ĉ comes from: Algorithm 1 as written (exact: the batch's fresh codes are
             written, then searched), the same with the batch's own ids excluded from its
             neighbours, and the prefetch option with and without its warm start
  input      what the model sees and how much its code holds: binarised vs greyscale with the
             discretised logistic likelihood, the VGG-style vs the residual encoder
  collapse   posterior collapse with an autoregressive decoder: plain, KL warm-up, free bits,
             both; and the VAE beside each
Each variant: `acn-dist train --config C --set ... ` in one process (train.num_workers=0), then
`acn-dist evaluate` without figures or pixel baselines; the command is saved with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acn_dist.config import load  # noqa: E402
from acn_dist.evaluate.loading import resolve_checkpoint  # noqa: E402
from acn_dist.evaluate.run import evaluate  # noqa: E402
from acn_dist.train.driver import train  # noqa: E402

STUDIES: dict[str, dict[str, list[str]]] = {
    "freshness": {
        "exact": ["codes.mode=exact"],
        "exact-exclude-batch": ["codes.mode=exact", "codes.exclude_batch=true"],
        "prefetch-warm": ["codes.mode=prefetch", "codes.prefetch_warm_epochs=1"],
        "prefetch-cold": ["codes.mode=prefetch", "codes.prefetch_warm_epochs=0"],
    },
    "input": {
        "binarised-conv": ["data.binarize=dynamic", "model.encoder=conv"],
        "greyscale-conv": ["data.binarize=none", "model.encoder=conv"],
        "greyscale-resnet": ["data.binarize=none", "model.encoder=resnet"],
        "binarised-resnet": ["data.binarize=dynamic", "model.encoder=resnet"],
    },
    "collapse": {
        "acn-plain": ["model.objective=acn"],
        "acn-warmup": ["model.objective=acn", "train.kl_warmup_steps=1000"],
        "acn-freebits": ["model.objective=acn", "train.free_bits=0.25"],
        "acn-warmup-freebits": ["model.objective=acn", "train.kl_warmup_steps=1000", "train.free_bits=0.25"],
        "vae-plain": ["model.objective=vae"],
        "vae-warmup": ["model.objective=vae", "train.kl_warmup_steps=1000"],
        "vae-freebits": ["model.objective=vae", "train.free_bits=0.25"],
    },
}
EVALUATION = ["eval.baselines=false", "eval.ordered_limit=2000", "eval.kl_samples=4"]


def run_variant(config_path: str, study: str, variant: str, overrides: list[str], epochs: int,
                storage: str, extra: list[str]) -> dict:
    run_id = f"ablation-{study}-{Path(config_path).stem}-{variant}"
    settings = [*overrides, *extra, f"train.epochs={epochs}", "train.num_workers=0", f"train.run_id={run_id}",
                f"train.storage_path={storage}", "train.checkpoint_every=1000000", "tracking.enabled=false"]
    command = f"acn-dist train --config {config_path} " + " ".join(f"--set {s}" for s in settings)
    print(f"\n== {study}/{variant}: {command}", flush=True)
    started = time.perf_counter()
    history = train(load(config_path, settings))["history"]
    trained_s = time.perf_counter() - started
    evaluation = load(config_path, [*settings, *EVALUATION])
    metrics = evaluate(resolve_checkpoint(None, evaluation), overrides=evaluation, log=False, figures_on=False)
    per_epoch = {}
    for row in history:  # the last logged loss of every epoch: flat at the end = converged
        per_epoch[int(row["epoch"])] = row["loss"]
    return {"study": study, "variant": variant, "config": config_path, "overrides": overrides, "epochs": epochs,
            "command": command, "train_seconds": round(trained_s, 1),
            "mean_samples_per_s": history[-1].get("mean_samples_per_s") if history else None,
            "linear": metrics.get("linear_codes"), "linear_converged": metrics.get("linear_codes_converged"),
            "knn": metrics.get("knn_codes"), "nats": metrics["test_nats_per_image"], "kl": metrics["test_kl"],
            "train_loss_by_epoch": [round(per_epoch[e], 2) for e in sorted(per_epoch)],
            "same_batch_share": history[-1].get("same_batch_share") if history else None,
            "staleness": history[-1].get("staleness") if history else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=sorted(STUDIES))
    parser.add_argument("--config", default="jobs/configs/fashion_mnist.yaml")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", nargs="+", help="a subset of the study's variants")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every variant (e.g. the collapse study's warm-up length)")
    parser.add_argument("--storage", default="runs/ablation")
    parser.add_argument("--out", default="results/ablation.json")
    args = parser.parse_args()
    variants = STUDIES[args.study]
    chosen = args.variants or list(variants)
    unknown = sorted(set(chosen) - set(variants))
    if unknown:
        print(f"error: unknown variants {unknown} of study {args.study!r}; it has {list(variants)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for variant in chosen:
        row = run_variant(args.config, args.study, variant, variants[variant], args.epochs, args.storage, args.extra)
        print(json.dumps(row), flush=True)
        rows = json.loads(out.read_text()) if out.is_file() else []
        rows = [r for r in rows if (r["study"], r["config"], r["variant"]) != (args.study, args.config, variant)]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([*rows, row], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
