"""Local (single-process) training loop speed per decoder, and the loss after a fixed budget.

    python jobs/bench_local.py [--steps 150] [--budget-epochs 5] [--only acn/deconv acn/deconv+conv]

Prints and saves `bench_results/local.json`: samples/s of Algorithm 1 in one process on
mnist-digits for the deconv and gated PixelCNN decoders (ACN and VAE, the shipped configs), ACN
with the deconv decoder and the plain conv encoder instead of the residual one, and the loss
(nats/image) reached by ACN/deconv after `--budget-epochs` epochs (`budget`). `--only` runs the
named figures and keeps the others already in the JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from acn_dist.config import load
from acn_dist.train.driver import train_local


def run(config_path: str, root: str, runs: str, *overrides: str) -> dict:
    config = load(config_path, [f"data.root={root}", f"train.storage_path={runs}", "train.log_every=10",
                                "train.checkpoint_every=100000", *overrides])
    started = time.perf_counter()
    result = train_local(config)
    rates = [row["samples_per_s"] for row in result["history"][1:]]  # first window includes warm-up
    return {"steps": result["step"], "wall_s": time.perf_counter() - started,
            "samples_per_s": float(np.median(rates)) if rates else float("nan"),
            "final_loss": result["history"][-1]["loss"], "final_kl": result["history"][-1]["kl"]}


DECONV, PIXELCNN = "jobs/configs/mnist_digits.yaml", "jobs/configs/mnist_digits_pixelcnn.yaml"
SPEEDS = {"acn/deconv": (DECONV, ["model.objective=acn"]),
          "vae/deconv": (DECONV, ["model.objective=vae"]),
          "acn/deconv+conv": (DECONV, ["model.objective=acn", "model.encoder=conv"]),
          "acn/pixelcnn": (PIXELCNN, ["model.objective=acn"]),
          "vae/pixelcnn": (PIXELCNN, ["model.objective=vae"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--budget-epochs", type=int, default=5)
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="bench_results/local.json")
    parser.add_argument("--only", nargs="+", choices=[*SPEEDS, "budget"], default=[*SPEEDS, "budget"])
    args = parser.parse_args()
    out = Path(args.out)
    figures: dict[str, dict] = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as runs:
        for name in (n for n in SPEEDS if n in args.only):
            config_path, overrides = SPEEDS[name]
            figures[name] = {"config": config_path, "overrides": overrides,
                             **run(config_path, args.root, runs, *overrides, f"train.max_steps={args.steps}",
                                   f"train.run_id=speed-{name.replace('/', '-').replace('+', '-')}")}
            print(f"{name:>16}: {figures[name]['samples_per_s']:7.0f} samples/s", flush=True)
        if "budget" in args.only:
            budget = run(DECONV, args.root, runs, f"train.epochs={args.budget_epochs}", "train.run_id=budget")
            figures["budget"] = {"config": DECONV, "epochs": args.budget_epochs, **budget}
            print(f"ACN/deconv on mnist-digits after {args.budget_epochs} epochs ({budget['steps']} steps, "
                  f"{budget['wall_s']:.0f} s): {budget['final_loss']:.1f} nats/image (KL {budget['final_kl']:.1f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
