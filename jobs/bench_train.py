"""Training throughput: VAE vs ACN (prefetch and exact modes), same networks, data, batch, workers.

    python jobs/bench_train.py [--workers 2] [--steps 200] [--datasets fashion-mnist synthetic-1m]

For each dataset: samples/s of `vae`, `acn` prefetch and `acn` exact, the ratio ACN/VAE, and the
per-step time breakdown (data, forward, store wait, backward+allreduce) of rank 0, from runs on
a local Ray with the code-store actor. Prints and saves bench_results/train.json. Targets: ratio
>= 0.97 at N = 60k (Fashion-MNIST) and >= 0.9 at N = 1M (synthetic). `acn-prefetch-ivf` uses the
approximate (IVF) search backend, for tables too large for brute force on the store's CPUs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from acn_dist.config import load
from acn_dist.train.driver import train

CONFIGS = {"fashion-mnist": "jobs/configs/fashion_mnist.yaml", "synthetic-1m": "jobs/configs/synthetic_1m.yaml",
           "mnist-digits": "jobs/configs/mnist_digits.yaml"}
VARIANTS = {"vae": ["model.objective=vae"],
            "acn-prefetch": ["model.objective=acn", "codes.mode=prefetch"],
            "acn-exact": ["model.objective=acn", "codes.mode=exact"],
            "acn-prefetch-ivf": ["model.objective=acn", "codes.mode=prefetch", "codes.backend=ivf"]}
BREAKDOWN = ("data_ms", "forward_ms", "store_wait_ms", "backward_ms")


def run(config_path: str, runs: str, root: str, workers: int, steps: int, name: str, extra: list[str]) -> dict:
    config = load(config_path, [*extra, f"train.num_workers={workers}", f"train.max_steps={steps}",
                                f"train.run_id={name}", f"train.storage_path={runs}", f"data.root={root}",
                                "train.log_every=20", "train.checkpoint_every=100000", "tracking.enabled=false"])
    history = train(config)["history"][1:]  # the first window holds start-up
    return {"samples_per_s": float(np.median([row["samples_per_s"] for row in history])),
            **{key: float(np.median([row[key] for row in history])) for key in BREAKDOWN}}


def prior_network_ms(batch: int = 128, code_size: int = 16, repeats: int = 50) -> float:
    """Forward + backward of the paper's prior network p(z|ĉ) (3 x 512 tanh, 10 components) plus
    the MC KL, one thread (what a 1-CPU Ray Train worker gets): the model's own extra cost over
    the VAE, independent of the code store."""
    import time

    import torch

    from acn_dist.model.priors import ConditionalPrior

    torch.set_num_threads(1)
    prior = ConditionalPrior(code_size)
    neighbour, z = torch.randn(batch, code_size), torch.randn(batch, code_size)
    for _ in range(5):
        prior(neighbour).log_prob(z).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        prior(neighbour).log_prob(z).sum().backward()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "synthetic-1m"], choices=sorted(CONFIGS))
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="bench_results/train.json")
    args = parser.parse_args()
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as runs:
        for dataset in args.datasets:
            rows = {variant: run(CONFIGS[dataset], runs, args.root, args.workers, args.steps,
                                 f"bench-{dataset}-{variant}", extra) for variant, extra in VARIANTS.items()}
            for variant in VARIANTS.keys() - {"vae"}:
                rows[variant]["ratio_to_vae"] = rows[variant]["samples_per_s"] / rows["vae"]["samples_per_s"]
            figures[dataset] = rows
            for variant, row in rows.items():
                ratio = f" ratio to VAE {row['ratio_to_vae']:.3f}" if "ratio_to_vae" in row else ""
                print(f"{dataset:>14} {variant:>13}: {row['samples_per_s']:7.0f} samples/s{ratio} | per step: "
                      + " ".join(f"{key[:-3]} {row[key]:6.1f} ms" for key in BREAKDOWN), flush=True)
    prior_ms = prior_network_ms()
    print(f"prior network p(z|ĉ) forward+backward, batch 128, 1 thread: {prior_ms:.1f} ms/step "
          "(the ACN model's own extra work; the store's is the store_wait column)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"workers": args.workers, "steps": args.steps, "results": figures,
                                          "prior_network_ms": prior_ms}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
