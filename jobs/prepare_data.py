"""Prepare a dataset's WebDataset shards. Runs directly or under `ray job submit`.

    python jobs/prepare_data.py --config jobs/configs/fashion_mnist.yaml
"""

import sys

from acn_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
