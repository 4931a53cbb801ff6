"""Reader throughput: samples/s of the WebDataset reader (`ShardLoader`, 0/1/2 loader workers)
against Ray Data (`ray.data.read_webdataset` over the same shards, the same per-sample checks and
binarisation), one process, the training split of one dataset.

    python jobs/bench_data.py [--config jobs/configs/fashion_mnist.yaml] [--out bench_results/data.json]

Prints a table and saves the figures as JSON. Ray Data's figures are given for the first epoch
(planning and worker start included: what a training run pays) and for the later, warm epochs.
Ray Data is measured here only: training reads with `ShardLoader` (see the README's data section
for why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from acn_dist.config import load
from acn_dist.data import ShardLoader, prepare
from acn_dist.data.reader import decode_sample, split_shards, to_batch


def webdataset_rate(folder: Path, workers: int, batch_size: int, epochs: int) -> float:
    loader = ShardLoader(folder, "train", batch_size, workers=workers, binarization="dynamic")
    samples, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for ids, _, _ in loader.epoch(epoch):
            samples += len(ids)
    return samples / (time.perf_counter() - start)


class Decode:
    """Ray Data batch function: raw webdataset columns -> checked id, image, label columns."""

    def __init__(self, folder: Path):
        manifest, shards = split_shards(folder, "train")
        self.by_name = {Path(s.path).name: s for s in shards}
        self.image_shape = tuple(manifest["image_shape"])
        self.labelled = bool(manifest.get("labelled", True))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, images, labels = [], [], []
        members = [k for k in batch if k != "__url__"]
        for row in range(len(batch["__key__"])):
            shard = self.by_name[Path(str(batch["__url__"][row])).name]
            sample: dict[str, Any] = {k: batch[k][row] for k in members}
            sample_id, image, label = decode_sample(sample, shard, self.image_shape, self.labelled)
            ids.append(sample_id)
            images.append(image)
            labels.append(label)
        return {"id": np.asarray(ids, dtype=np.int64), "x": np.stack(images),
                "label": np.asarray(labels, dtype=np.int64)}


def ray_data_rates(folder: Path, batch_size: int, epochs: int) -> tuple[float, float]:
    """(first epoch, later epochs) samples/s of Ray Data yielding the same batches as ShardLoader."""
    import ray
    import ray.data

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        _, shards = split_shards(folder, "train")
        dataset = ray.data.read_webdataset([s.path for s in shards], decoder=None, include_paths=False) \
            .map_batches(Decode(folder), batch_format="numpy")
        rates = []
        for epoch in range(max(epochs, 2)):
            samples, start = 0, time.perf_counter()
            for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
                ids, _, _ = to_batch(list(batch["id"]), list(batch["x"]), list(batch["label"]),
                                     "dynamic", 0, epoch)
                samples += len(ids)
            rates.append(samples / (time.perf_counter() - start))
        return rates[0], float(np.mean(rates[1:]))
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="jobs/configs/fashion_mnist.yaml")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="bench_results/data.json")
    args = parser.parse_args()
    config = load(args.config)
    folder = prepare(config.data)
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "train_samples": ShardLoader(folder, "train", 1).count,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "samples_per_s": {},
    }
    rates = results["samples_per_s"]
    for workers in (0, 1, 2):
        rates[f"webdataset_{workers}_workers"] = round(webdataset_rate(folder, workers, args.batch_size,
                                                                       args.epochs), 1)
    first, warm = ray_data_rates(folder, args.batch_size, args.epochs)
    rates["ray_data_first_epoch"], rates["ray_data_warm_epochs"] = round(first, 1), round(warm, 1)
    for name, rate in rates.items():
        print(f"reader {config.data.dataset}: {name:24s} {rate:10.0f} samples/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
