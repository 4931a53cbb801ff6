"""Prepare a dataset's WebDataset shards. Runs directly or under `ray job submit`.

    python jobs/prepare_data.py --config jobs/configs/fashion_mnist.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, under `ray job submit`

from acn_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
