"""Security and reliability at the edges: one owner per run, safe run ids, checkpoints that cannot
run code, refusals that write nothing, refusals from inside Ray as one line and exit code 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acn_dist.config import ConfigError, load
from acn_dist.errors import EvaluationError, RunError
from acn_dist.runs.checkpoints import load_checkpoint
from acn_dist.runs.lock import Owner, RunLock, read_owner

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "jobs/configs/sklearn_digits.yaml")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acn_dist.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""}, cwd=ROOT)


def settings(data_root: Path, tmp: Path, run_id: str, *more: str) -> list[str]:
    pairs = [f"data.root={data_root}", f"train.storage_path={tmp / 'runs'}", f"train.run_id={run_id}",
             f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", f"tracking.artifact_location={(tmp / 'art').as_uri()}",
             "data.loader_workers=0", "train.log_every=5", *more]
    return [a for pair in pairs for a in ("--set", pair)]


def files_under(folder: Path) -> dict[str, int]:
    """Every file below `folder` with its modification time: what "nothing written" compares."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- one owner per run -----------------------------------------------------------------------------

def test_a_live_owner_keeps_the_run_and_a_dead_one_is_taken_over(tmp_path: Path) -> None:
    lock_file = tmp_path / "run" / "owner.json"
    with RunLock(lock_file, "run") as first:
        with pytest.raises(RunError, match=f"run 'run' is already being trained by its owner \\(host "
                                           f"{socket.gethostname()}, pid {os.getpid()}"):
            RunLock(lock_file, "run").acquire()
        assert read_owner(lock_file).token == first.token
    assert not lock_file.exists()  # released on exit
    # A lock left by a process that died (here: one that has exited) is taken over at once.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Owner(socket.gethostname(), int(gone.stdout), None, "earlier", "dead-token", time.time())
    lock_file.write_text(json.dumps(dead.__dict__))
    with RunLock(lock_file, "run") as taken:
        assert read_owner(lock_file).token == taken.token != "dead-token"
    # On another host only a stale heartbeat says the owner died.
    fresh = Owner("another-host", 1, None, "now", "remote", time.time())
    lock_file.write_text(json.dumps(fresh.__dict__))
    with pytest.raises(RunError, match="host another-host, pid 1"):
        RunLock(lock_file, "run", stale_after_s=60).acquire()
    stale = Owner("another-host", 1, None, "long ago", "remote", time.time() - 600)
    lock_file.write_text(json.dumps(stale.__dict__))
    with RunLock(lock_file, "run", stale_after_s=60) as taken:
        assert read_owner(lock_file).token == taken.token


def test_a_second_start_of_a_running_run_is_refused_naming_its_owner(sklearn_digits: Path, tmp_path: Path) -> None:
    args = ["train", "--config", DIGITS, *settings(sklearn_digits.parent, tmp_path, "owned", "train.epochs=40",
                                                   "train.checkpoint_every=20")]
    first = subprocess.Popen([sys.executable, "-m", "acn_dist.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    lock_file = tmp_path / "runs" / "owned" / "owner.json"
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "runs" / "owned" / "metrics.jsonl").is_file():
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        config_written = (tmp_path / "runs" / "owned" / "config.yaml").stat().st_mtime_ns
        second = cli(*args)
        assert second.returncode == 2
        assert f"run 'owned' is already being trained by its owner (host {socket.gethostname()}, pid {first.pid}" \
            in one_line(second.stderr)
        assert read_owner(lock_file).pid == first.pid  # the owner keeps its lock
        assert (tmp_path / "runs" / "owned" / "config.yaml").stat().st_mtime_ns == config_written
        assert len(mlflow_runs(tmp_path)) == 1  # and its one MLflow run
    finally:
        first.terminate()
        first.wait(timeout=60)


# --- run ids and config values --------------------------------------------------------------------

@pytest.mark.parametrize("run_id", ["../../x", "a'b", ".hidden", "a/b", "x" * 129, "a b"])
def test_unsafe_run_ids_are_refused_with_the_allowed_characters(run_id: str) -> None:
    with pytest.raises(ConfigError, match="train.run_id: .* is not allowed; use 1 to 128 characters from letters"):
        load(None, [f"train.run_id={run_id}"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", "1e999"])
def test_every_float_key_refuses_nan_and_infinities(value: str) -> None:
    for key in ("train.lr", "train.grad_clip", "train.free_bits", "codes.batch_window_ms", "prior.min_scale"):
        with pytest.raises(ConfigError, match=f"{key}: .* is not a finite number"):
            load(None, [f"{key}={value}"])


# --- checkpoints cannot run code ------------------------------------------------------------------

class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000000001"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"model": RunsCode(marker)}, checkpoint / "state.pt")
    (checkpoint / "meta.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(RunError, match="holds more than tensors and plain values and was refused"):
        load_checkpoint(checkpoint)
    done = cli("evaluate", "--checkpoint", str(checkpoint), "--set", "tracking.enabled=false")
    assert done.returncode == 2 and "was refused" in one_line(done.stderr)
    assert not marker.exists()


# --- refusals write nothing -----------------------------------------------------------------------

def mlflow_runs(tmp: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("acn_dist")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_refused_start_writes_no_file_and_no_mlflow_run(sklearn_digits: Path, tmp_path: Path) -> None:
    base = ["train", "--config", DIGITS]
    done = cli(*base, *settings(sklearn_digits.parent, tmp_path, "refused", "codes.k=5000"))
    assert done.returncode == 2 and "codes.k=5000 must be in 1..1436" in one_line(done.stderr)
    assert not (tmp_path / "runs").exists() and mlflow_runs(tmp_path) == []
    # Resuming with a shape-changing key: refused before anything of the finished run changes.
    assert cli(*base, *settings(sklearn_digits.parent, tmp_path, "done", "train.max_steps=10")).returncode == 0
    run = tmp_path / "runs" / "done"
    before, (finished,) = files_under(run), mlflow_runs(tmp_path)
    assert finished.info.status == "FINISHED"
    done = cli(*base, *settings(sklearn_digits.parent, tmp_path, "done", "train.max_steps=20", "model.code_size=32"))
    assert done.returncode == 2
    assert "run 'done' was trained with model.code_size=16; resuming it with 32" in one_line(done.stderr)
    assert files_under(run) == before
    (again,) = mlflow_runs(tmp_path)
    assert again.info.status == "FINISHED" and again.info.run_id == finished.info.run_id


# --- refusals from inside Ray ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_data_error_inside_a_ray_worker_is_one_line_exit_2_and_never_retried(sklearn_digits: Path,
                                                                                tmp_path: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    shard = folder / "train-000003.tar"
    raw = bytearray(shard.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 150] ^= 0xFF  # same size: the driver's size check passes, the workers' sha256 not
    shard.write_bytes(bytes(raw))
    started = time.monotonic()
    done = cli("train", "--config", DIGITS, *settings(folder.parent, tmp_path, "inray", "train.num_workers=2",
                                                      "train.max_failures=3", "tracking.enabled=false"),
               timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_line(done.stderr).startswith("error: shard train-000003.tar: sha256")
    assert "training attempt" not in done.stdout + done.stderr  # our retry line: a refusal is never retried
    assert (done.stdout + done.stderr).count("Started training worker group") == 1  # nor by Ray Train
    assert time.monotonic() - started < 300


def test_evaluating_on_another_dataset_is_refused_by_name(sklearn_digits: Path, tmp_path: Path) -> None:
    assert cli("train", "--config", DIGITS, *settings(sklearn_digits.parent, tmp_path, "evalme",
                                                      "train.max_steps=5", "tracking.enabled=false")).returncode == 0
    checkpoint = str(tmp_path / "runs" / "evalme")
    done = cli("evaluate", "--checkpoint", checkpoint, "--config", str(ROOT / "jobs/configs/mnist_digits.yaml"),
               "--set", f"data.root={sklearn_digits.parent}", "--set", "tracking.enabled=false")
    assert done.returncode == 2
    assert "was trained on 'sklearn-digits', not 'mnist-digits'" in one_line(done.stderr)
    # the same name, other data: refused by what the manifest says
    from acn_dist.evaluate.loading import check_dataset, load_trained
    from acn_dist.runs.checkpoints import latest_checkpoint

    trained = load_trained(latest_checkpoint(checkpoint))
    other = tmp_path / "other" / "sklearn-digits"
    other.mkdir(parents=True)
    manifest = json.loads((sklearn_digits / "manifest.json").read_text())
    manifest["image_shape"] = [28, 28]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match="with image_shape=\\[8, 8\\]; the dataset at .* has image_shape=\\[28, 28\\]"):
        check_dataset(trained, load(None, [f"data.root={other.parent}", "data.dataset=sklearn-digits"]))


def test_an_address_nobody_can_reach_is_a_clear_error_within_30_seconds(sklearn_digits: Path, tmp_path: Path) -> None:
    for address in ("127.0.0.1:0", "127.0.0.1:1"):
        started = time.monotonic()
        done = cli("train", "--config", DIGITS, "--address", address,
                   *settings(sklearn_digits.parent, tmp_path, "noray", "train.num_workers=2", "tracking.enabled=false"))
        assert done.returncode == 2
        assert f"cannot join the Ray cluster at '{address}'" in one_line(done.stderr)
        assert time.monotonic() - started < 30
        assert not (tmp_path / "runs").exists()


def test_driver_refuses_unsafe_run_id_before_writing(sklearn_digits: Path, tmp_path: Path) -> None:
    done = cli("train", "--config", DIGITS, *settings(sklearn_digits.parent, tmp_path, "../../escape"))
    assert done.returncode == 2 and "train.run_id" in one_line(done.stderr)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_the_bad_input_suite_refuses_everything_clearly_and_loses_nothing(tmp_path: Path) -> None:
    """Every case of `tests/bad_inputs.py` (also run by `jobs/chaos.py`): exit code 2, a last line
    naming the culprit, every existing file intact, and nothing written for a refusal at start."""
    from tests.bad_inputs import run_suite

    reports = run_suite(tmp_path / "workspace")
    for report in reports:
        assert report.refused and report.clear and report.nothing_lost, report
        found_while_reading = report.bad_input in ("shard with flipped pixel bytes",
                                                   "pickle member in a shard (consistent manifest)")
        assert (report.files_written == 0 and report.mlflow_runs_added == 0) or found_while_reading, report
