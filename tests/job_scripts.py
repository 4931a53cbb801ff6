"""Test tooling: import a script of `jobs/` as a module (it is a script folder, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def load_job(name: str) -> ModuleType:
    """`jobs/<name>.py` as a module; jobs/ is on sys.path while it loads, as when it runs (a job
    script imports its siblings, e.g. ablation.py imports paper_table)."""
    spec = importlib.util.spec_from_file_location(name, JOBS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {JOBS / f'{name}.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(JOBS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(JOBS))
    return module
