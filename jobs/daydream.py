"""`acn-dist daydream` as a script (also for `ray job submit`).

    python jobs/daydream.py                              (the latest finished run under train.storage_path)
    python jobs/daydream.py --run RUN [--set eval.seed=1 ...]
    python jobs/daydream.py --checkpoint runs/RUN/checkpoints/step-000001000
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, under `ray job submit`

from acn_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["daydream", *sys.argv[1:]]))
