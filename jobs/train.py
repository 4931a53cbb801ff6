"""Train an ACN (or VAE): locally, on a local Ray, or as a Ray job on a cluster.

    python jobs/train.py --config jobs/configs/fashion_mnist.yaml [--set train.num_workers=2 ...]
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \\
        -- python jobs/train.py --config jobs/configs/fashion_mnist.yaml

Same as `acn-dist train`. Under `ray job submit`, RAY_ADDRESS is set and the job joins that cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, under `ray job submit`

from acn_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
