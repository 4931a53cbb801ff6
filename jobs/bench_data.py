"""Reader throughput: samples/s of `ShardLoader` on 28x28 shards with 1 and 2 loader workers.

    python jobs/bench_data.py [--config jobs/configs/mnist_digits.yaml] [--out bench_results/data.json]
Prints a table and saves the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from acn_dist.config import load
from acn_dist.data import ShardLoader, prepare


def measure(folder: Path, workers: int, batch_size: int, epochs: int) -> float:
    loader = ShardLoader(folder, "train", batch_size, workers=workers, binarization="dynamic")
    samples, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for ids, _, _ in loader.epoch(epoch):
            samples += len(ids)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="jobs/configs/mnist_digits.yaml")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="bench_results/data.json")
    args = parser.parse_args()
    config = load(args.config)
    folder = prepare(config.data)
    results = {
        "dataset": config.data.dataset,
        "batch_size": args.batch_size,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "samples_per_s": {},
    }
    for workers in (0, 1, 2):
        rate = measure(folder, workers, args.batch_size, args.epochs)
        results["samples_per_s"][f"{workers}_workers"] = round(rate, 1)
        print(f"reader {config.data.dataset}: {workers} loader workers: {rate:10.0f} samples/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
