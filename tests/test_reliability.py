"""Reliability: faults survived (real local Ray), interrupted writes, NaN, bad inputs, load."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acn_dist.codes.store import CodeStore
from acn_dist.config import Config, ConfigError, load
from acn_dist.errors import NonFiniteError
from acn_dist.model.acn import ACN, Posterior
from acn_dist.runs import checkpoints as checkpoint_module
from acn_dist.runs.checkpoints import latest_checkpoint, save_checkpoint
from acn_dist.train.driver import train, train_local
from tests import faults as chaos
from tests.faults import run_of

ROOT = Path(__file__).resolve().parents[1]


def digits(data_root: Path, runs: Path, run_id: str, *overrides: str) -> Config:
    return load(str(ROOT / "jobs/configs/sklearn_digits.yaml"), [
        f"data.root={data_root}", f"train.storage_path={runs}", f"train.run_id={run_id}", "data.loader_workers=0",
        "tracking.enabled=false", "train.log_every=5", *overrides])


def steps_per_epoch(folder: Path, world: int) -> int:
    from acn_dist.data.reader import ShardLoader

    return ShardLoader(folder, "train", 64, rank=0, world=world).steps(0)


# --- interrupted writes ---------------------------------------------------------------------------

def test_an_interrupted_checkpoint_write_never_becomes_latest(tmp_path: Path, monkeypatch) -> None:
    store = CodeStore(50, 4)
    save_checkpoint(tmp_path, {"weights": torch.zeros(1)}, {"step": 10}, store)
    real_save = torch.save

    def crash_half_way(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:10])  # a torn file...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"weights": torch.zeros(1)}, {"step": 20}, store)
    assert latest_checkpoint(tmp_path).name == "step-000000010"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000000010"]  # no scratch left
    # a scratch folder left by a killed process (no rename happened) is not a checkpoint either
    (tmp_path / "checkpoints" / ".step-000000030.tmp-1-2").mkdir()
    (tmp_path / "checkpoints" / ".step-000000030.tmp-1-2" / "state.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "step-000000010"


def test_an_interrupted_snapshot_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    store = CodeStore(50, 4)
    store.update(np.arange(5), np.ones((5, 4), np.float32))
    store.snapshot(tmp_path / "codes")
    before = np.load(tmp_path / "codes" / "table.npy")
    store.update(np.arange(5), np.full((5, 4), 2.0, np.float32))
    real_save = np.save

    def crash_on_second_file(path, array, *args, **kwargs):
        if str(path).endswith("row_step.npy"):
            raise OSError("killed")
        real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", crash_on_second_file)
    with pytest.raises(OSError):
        store.snapshot(tmp_path / "codes")
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(tmp_path / "codes" / "table.npy"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes"]


# --- NaN / Inf ------------------------------------------------------------------------------------

def nan_encoder(monkeypatch) -> None:
    real_posterior = ACN.posterior
    def nan_posterior(self, x):
        posterior = real_posterior(self, x)
        return Posterior(posterior.code * torch.nan, posterior.log_scale)

    monkeypatch.setattr(ACN, "posterior", nan_posterior)


def test_nan_codes_stop_the_run_naming_the_step_and_the_last_checkpoint_survives(
        sklearn_digits: Path, tmp_path: Path, monkeypatch) -> None:
    train_local(digits(sklearn_digits.parent, tmp_path, "nan", "train.max_steps=10", "train.checkpoint_every=10"))
    good = latest_checkpoint(tmp_path / "nan")
    table = np.load(good / "codes" / "table.npy")
    nan_encoder(monkeypatch)
    with pytest.raises(NonFiniteError, match="step 10: the encoder produced NaN/Inf codes; none were stored"):
        train_local(digits(sklearn_digits.parent, tmp_path, "nan", "train.max_steps=20", "train.checkpoint_every=10"))
    assert latest_checkpoint(tmp_path / "nan") == good
    np.testing.assert_array_equal(np.load(good / "codes" / "table.npy"), table)


def test_nan_steps_can_be_skipped_and_counted_and_never_reach_the_table(
        sklearn_digits: Path, tmp_path: Path, monkeypatch) -> None:
    nan_encoder(monkeypatch)
    result = train_local(digits(sklearn_digits.parent, tmp_path, "skip", "train.max_steps=6",
                                "train.nonfinite=skip", "train.checkpoint_every=6"))
    assert result["skipped_nonfinite"] == 6
    codes = Path(result["checkpoint"]) / "codes"
    assert np.isfinite(np.load(codes / "table.npy")).all()
    assert np.all(np.load(codes / "row_step.npy") == -1)  # nothing was written


# --- bad inputs -----------------------------------------------------------------------------------

def test_unwritable_storage_path_is_refused_before_anything_starts(sklearn_digits: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="train.storage_path=.*a-file.*writable"):
        train(digits(sklearn_digits.parent, blocker, "x"))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["codes.k=1437"], "StoreError", "codes.k=1437 must be in 1..1436"),
        (["model.code_size=0"], "ConfigError", "model.code_size"),
        (["train.num_workers=512"], "ClusterError", "train.num_workers=512 exceeds"),
    ],
)
def test_impossible_configs_are_refused_with_the_key(sklearn_digits: Path, tmp_path: Path, overrides, error,
                                                     message) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "acn_dist.cli", "train", "--config", str(ROOT / "jobs/configs/sklearn_digits.yaml"),
         "--set", f"data.root={sklearn_digits.parent}", "--set", f"train.storage_path={tmp_path}",
         "--set", "tracking.enabled=false", *[a for o in overrides for a in ("--set", o)]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr


# --- faults on a real local Ray -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("fault", "inject"), [("worker", chaos.kill_a_worker), ("store", chaos.kill_the_store)])
def test_the_run_survives_a_killed_worker_or_store(ray_local, sklearn_digits: Path, tmp_path: Path, fault,
                                                   inject) -> None:
    config = digits(sklearn_digits.parent, tmp_path, fault, "train.num_workers=2", "train.max_failures=2",
                    "train.epochs=8", "train.checkpoint_every=20")
    report = chaos.in_run_fault(config, fault, inject, after_step=20, train=train)
    assert report.injected and report.survived, report
    expected = 8 * steps_per_epoch(sklearn_digits, world=2)
    assert report.final_step == expected
    assert report.steps_redone <= config.train.checkpoint_every + config.train.log_every
    final = run_of(config).latest_checkpoint()
    assert final.name == f"step-{expected:09d}"
    assert np.isfinite(np.load(final / "codes" / "table.npy")).all()
    if fault == "worker":
        assert report.steps_redone > 0  # the group restarted from a checkpoint
        steps = [row["step"] for row in run_of(config).history()]
        assert steps[-1] == expected


@pytest.mark.slow
def test_killing_the_driver_and_running_again_resumes(sklearn_digits: Path, tmp_path: Path) -> None:
    run_id = "driver"
    overrides = [f"data.root={sklearn_digits.parent}", f"train.storage_path={tmp_path}", f"train.run_id={run_id}",
                 "tracking.enabled=false", "train.num_workers=2", "train.epochs=8", "train.checkpoint_every=20",
                 "train.log_every=5"]
    command = [sys.executable, str(ROOT / "jobs/train.py"), "--config", str(ROOT / "jobs/configs/sklearn_digits.yaml"),
               *[a for o in overrides for a in ("--set", o)]]
    report = chaos.driver_fault(command, run_of(load(None, overrides)), after_step=20, log_every=5, cwd=str(ROOT))
    assert report.survived, report.detail
    assert report.final_step == 8 * steps_per_epoch(sklearn_digits, world=2)



def test_a_signal_stops_training_after_a_checkpoint_of_its_step_and_the_same_command_resumes(
        sklearn_digits: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    overrides = [f"data.root={sklearn_digits.parent}", f"train.storage_path={tmp_path}", "train.run_id=stopped",
                 "tracking.enabled=false", "train.num_workers=0", "train.epochs=3", "train.checkpoint_every=100000",
                 "train.log_every=2"]
    command = [sys.executable, str(ROOT / "jobs/train.py"), "--config", str(ROOT / "jobs/configs/sklearn_digits.yaml"),
               *[a for o in overrides for a in ("--set", o)]]
    run = run_of(load(None, overrides))
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_ADDRESS": ""})
    deadline = time.monotonic() + 240
    while not run.history() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = int(run.history()[-1]["step"])
    checkpoint = latest_checkpoint(run.path)
    assert checkpoint is not None and checkpoint.name == f"step-{stopped_at:09d}"  # no scheduled one was due
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM at step {stopped_at}; checkpoint {checkpoint}: "
                                            "run the same command again to resume")
    assert not run.final_pointer.is_file()  # stopped, not finished
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAY_ADDRESS": ""})
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"at step {stopped_at} " in second.stdout + second.stderr
    assert int(run.history()[-1]["step"]) == 3 * steps_per_epoch(sklearn_digits, world=1)
    assert run.final_pointer.is_file()


def test_stop_signals_are_noted_once_then_act_as_before_and_the_handlers_come_back() -> None:
    import signal

    from acn_dist.train.stopping import StopSignals

    # SIGINT as a terminal session has it: a shell's background job (`make test &`, nohup) starts with it
    # ignored, and there a second signal rightly does nothing, as before
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with StopSignals() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):  # a second signal acts as before: Ctrl-C twice interrupts
                os.kill(os.getpid(), signal.SIGINT)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, inherited)


# --- load -----------------------------------------------------------------------------------------

@pytest.mark.slow  # 8 Ray client actors: ~2.5 min; test_actor's concurrent test covers consistency in `make test`
def test_store_under_many_concurrent_clients_loses_no_update(ray_local) -> None:
    figures = chaos.store_load(clients=8, calls=200, size=5000, dim=8, rows=32)
    assert figures["rows_with_lost_update"] == 0
    assert figures["total_calls"] == 1600
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"] <= figures["latency_max_ms"]
