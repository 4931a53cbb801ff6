"""`acn-dist evaluate` as a script (also for `ray job submit`).

    python jobs/evaluate.py                              (the latest finished run under train.storage_path)
    python jobs/evaluate.py --run RUN [--set eval.seed=1 ...]
    python jobs/evaluate.py --checkpoint runs/RUN/checkpoints/step-000001000
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, under `ray job submit`

from acn_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
