"""The bad-input suite: every way a user can hand the project something wrong, tried through the
`acn-dist` command as a user would, each checked for the contract: refused with exit code 2, one
last line naming the culprit, nothing lost (every file that existed is as it was, no code from
the input ran, nothing written outside the storage path), and what was written: nothing for a
refusal at start; for damage only found while reading the data (flipped bytes, a pickle member
behind a consistent manifest), the new run's folder and its FAILED MLflow run.

Test tooling, not part of the package: used by `tests/test_security.py` and `jobs/chaos.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "jobs/configs/sklearn_digits.yaml")


@dataclass
class BadInputReport:
    bad_input: str
    refused: bool  # exit code 2
    clear: bool  # the last line names the culprit
    nothing_lost: bool  # every file that existed is unchanged; no code ran; nothing outside the workspace
    files_written: int  # new files in the workspace (0: refused before anything was written)
    mlflow_runs_added: int
    seconds: float
    last_line: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the acn-dist arguments, given the workspace
    culprit: str  # what the last line must name
    setup: Callable[[Path], None] = lambda workspace: None


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acn_dist.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""})


def common(workspace: Path, run_id: str = "bad", *more: str) -> list[str]:
    pairs = [f"data.root={workspace / 'data'}", f"train.storage_path={workspace / 'runs'}", f"train.run_id={run_id}",
             f"tracking.uri=sqlite:///{workspace / 'mlflow.db'}",
             f"tracking.artifact_location={(workspace / 'artifacts').as_uri()}", "data.loader_workers=0",
             "train.max_steps=5", *more]
    return [a for pair in pairs for a in ("--set", pair)]


def damaged_copy(workspace: Path, name: str, damage: Callable[[Path], None]) -> None:
    """A copy of the prepared digits under another root (`data-<name>`), damaged by `damage`."""
    target = workspace / f"data-{name}" / "sklearn-digits"
    shutil.copytree(workspace / "data" / "sklearn-digits", target)
    damage(target)


def flip_pixels(folder: Path) -> None:
    path = folder / "train-000001.tar"
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 150] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(folder: Path) -> None:
    path = folder / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickle_member(folder: Path) -> None:
    """A shard holding a pickle, with a manifest made consistent with it (sizes and checksums)."""
    path = folder / "train-000000.tar"
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    with wds.TarWriter(str(path)) as writer:
        for sample_id in range(entry["first_id"], entry["first_id"] + entry["count"]):
            buffer = io.BytesIO()
            np.save(buffer, np.zeros((8, 8), np.uint8))
            writer.write({"__key__": f"{sample_id:010d}", "x.npy": buffer.getvalue(), "cls": b"1",
                          "x.pyd": b"\x80\x04N."})
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def crafted_checkpoint(workspace: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {workspace / 'pwned'}",))

    folder = workspace / "crafted" / "checkpoints" / "step-000000001"
    folder.mkdir(parents=True)
    torch.save({"model": RunsCode()}, folder / "state.pt")
    (folder / "meta.json").write_text(json.dumps({"step": 1}))


def python_tag_config(workspace: Path) -> None:
    (workspace / "tagged.yaml").write_text("train: !!python/object/apply:os.system ['touch pwned']\n")


CASES = [
    Case("learning rate NaN", lambda w: ["train", "--config", DIGITS, *common(w, "bad", "train.lr=nan")], "train.lr"),
    Case("learning rate infinite", lambda w: ["train", "--config", DIGITS, *common(w, "bad", "train.lr=inf")], "train.lr"),
    Case("run id escaping the storage path", lambda w: ["train", "--config", DIGITS, *common(w, "../../escape")],
         "train.run_id"),
    Case("run id with a quote", lambda w: ["train", "--config", DIGITS, *common(w, "a'b")], "train.run_id"),
    Case("unknown config key", lambda w: ["train", "--config", DIGITS, *common(w), "--set", "train.lrr=1"],
         "train.lrr"),
    Case("out-of-range value", lambda w: ["train", "--config", DIGITS, *common(w, "bad", "model.code_size=0")],
         "model.code_size"),
    Case("YAML python tag in a config", lambda w: ["train", "--config", str(w / "tagged.yaml"), *common(w)],
         "tagged.yaml", python_tag_config),
    Case("codes.k larger than the data", lambda w: ["train", "--config", DIGITS, *common(w, "bad", "codes.k=5000")],
         "codes.k=5000"),
    Case("more workers than CPUs", lambda w: ["train", "--config", DIGITS, *common(w, "bad", "train.num_workers=512")],
         "train.num_workers=512"),
    Case("unreachable Ray address", lambda w: ["train", "--config", DIGITS, "--address", "127.0.0.1:0",
                                               *common(w, "bad", "train.num_workers=2")], "127.0.0.1:0"),
    Case("shard with flipped pixel bytes",
         lambda w: ["train", "--config", DIGITS, *common(w, "flipped"), "--set", f"data.root={w / 'data-flipped'}"],
         "train-000001.tar", lambda w: damaged_copy(w, "flipped", flip_pixels)),
    Case("truncated shard",
         lambda w: ["train", "--config", DIGITS, *common(w, "truncated"), "--set", f"data.root={w / 'data-truncated'}"],
         "train-000000.tar", lambda w: damaged_copy(w, "truncated", truncate)),
    Case("pickle member in a shard (consistent manifest)",
         lambda w: ["train", "--config", DIGITS, *common(w, "pickled"), "--set", f"data.root={w / 'data-pickle'}"],
         "pickle", lambda w: damaged_copy(w, "pickle", pickle_member)),
    Case("checkpoint whose pickle runs code",
         lambda w: ["evaluate", "--checkpoint", str(w / "crafted"), "--set", "tracking.enabled=false"],
         "state.pt", crafted_checkpoint),
    Case("resume with another code size",
         lambda w: ["train", "--config", DIGITS, *common(w, "finished", "model.code_size=32")], "model.code_size"),
    Case("more training data than the source has",
         lambda w: ["prepare", "--config", DIGITS, "--set", f"data.root={w / 'data'}", "--set", "data.dataset=digits-5000",
                    "--set", "data.train_count=5000"], "data.train_count=5000"),
    Case("a training subset of synthetic data",
         lambda w: ["train", "--config", DIGITS, *common(w, "bad", "data.source=synthetic", "data.train_count=100")],
         "data.train_count"),
    Case("evaluate on another dataset",
         lambda w: ["evaluate", "--checkpoint", str(w / "runs" / "finished"), "--config",
                    str(ROOT / "jobs/configs/mnist_digits.yaml"), "--set", f"data.root={w / 'data'}",
                    "--set", "tracking.enabled=false"], "mnist-digits"),
]


def snapshot(workspace: Path) -> dict[str, tuple[int, int]]:
    """Every file of the workspace (size, mtime) but the MLflow store, which is compared by runs."""
    return {str(p.relative_to(workspace)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in workspace.rglob("*") if p.is_file() and not p.name.startswith("mlflow.db")}


def mlflow_runs(workspace: Path) -> list[tuple[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("acn_dist")
    if experiment is None:
        return []
    return sorted((run.info.run_id, run.info.status) for run in client.search_runs([experiment.experiment_id]))


def prepare_workspace(workspace: Path) -> None:
    """The digits prepared, and one finished run ("finished") to resume and evaluate."""
    done = cli(["prepare", "--config", DIGITS, "--set", f"data.root={workspace / 'data'}"])
    assert done.returncode == 0, done.stderr
    done = cli(["train", "--config", DIGITS, *common(workspace, "finished")])
    assert done.returncode == 0, done.stderr


def try_case(case: Case, workspace: Path) -> BadInputReport:
    case.setup(workspace)
    before, runs_before = snapshot(workspace), mlflow_runs(workspace)
    started = time.perf_counter()
    done = cli(case.args(workspace))
    seconds = time.perf_counter() - started
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    after, runs_after = snapshot(workspace), mlflow_runs(workspace)
    # every file as it was, every MLflow run still there with its status
    intact = all(after.get(path) == state for path, state in before.items()) and set(runs_before) <= set(runs_after)
    nothing_lost = intact and not (workspace / "pwned").exists() and not (workspace.parent / "escape").exists()
    return BadInputReport(case.name, done.returncode == 2, case.culprit in last, nothing_lost,
                          len(set(after) - set(before)), len(runs_after) - len(runs_before), seconds, last[:300])


def run_suite(workspace: Path) -> list[BadInputReport]:
    workspace.mkdir(parents=True, exist_ok=True)
    prepare_workspace(workspace)
    return [try_case(case, workspace) for case in CASES]


def written(report: BadInputReport) -> str:
    if report.files_written == 0 and report.mlflow_runs_added == 0:
        return "nothing"
    return f"{report.files_written} files of the new run, {report.mlflow_runs_added} MLflow run (FAILED)"


def table(reports: list[BadInputReport]) -> str:
    lines = ["| bad input | refused (exit 2) | one line naming the culprit | nothing lost | written |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.bad_input} | {'yes' if r.refused else 'NO'} | {'yes' if r.clear else 'NO'} | "
              f"{'yes' if r.nothing_lost else 'NO'} | {written(r)} |" for r in reports]
    return "\n".join(lines)
