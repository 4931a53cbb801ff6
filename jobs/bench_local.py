"""Local (single-process) training loop speed per decoder, and the loss after a fixed budget.

    python jobs/bench_local.py [--steps 150] [--budget-epochs 5]

Prints and saves `bench_results/local.json`: samples/s of Algorithm 1 in one process on
mnist-digits for the deconv and gated PixelCNN decoders (ACN and VAE), and the loss (nats/image)
reached by ACN/deconv after `--budget-epochs` epochs.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--budget-epochs", type=int, default=5)
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="bench_results/local.json")
    args = parser.parse_args()
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as runs:
        for decoder, config_path in (("deconv", "jobs/configs/mnist_digits.yaml"),
                                     ("pixelcnn", "jobs/configs/mnist_digits_pixelcnn.yaml")):
            for objective in ("acn", "vae"):
                name = f"{objective}/{decoder}"
                figures[name] = run(config_path, args.root, runs, f"model.objective={objective}",
                                    f"train.max_steps={args.steps}", f"train.run_id=speed-{objective}-{decoder}")
                print(f"{name:>14}: {figures[name]['samples_per_s']:7.0f} samples/s", flush=True)
        budget = run("jobs/configs/mnist_digits.yaml", args.root, runs, f"train.epochs={args.budget_epochs}",
                     "train.run_id=budget")
        figures["budget"] = {"config": "jobs/configs/mnist_digits.yaml", "epochs": args.budget_epochs, **budget}
        print(f"ACN/deconv on mnist-digits after {args.budget_epochs} epochs ({budget['steps']} steps, "
              f"{budget['wall_s']:.0f} s): {budget['final_loss']:.1f} nats/image (KL {budget['final_kl']:.1f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
