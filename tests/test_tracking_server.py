"""MLflow as on a cluster: a real `mlflow server` with proxied artifacts, a training run logging to
it through Ray Train, read back with `MlflowClient`; and the refusals that keep a run from landing
somewhere it would vanish (a Ray job's temporary working dir, one node's disk)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acn_dist.config import load
from acn_dist.errors import TrackingError
from acn_dist.tracking import Tracker, check_location
from acn_dist.train.driver import train

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with `start_new_session=True` and everything it started, by its id
    (its process group): SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path  # --artifacts-destination: where the server's artifact store keeps files
    process: subprocess.Popen


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {log.read_text()[-3000:]}")


def start_mlflow_server(folder: Path) -> MlflowServer:
    """`mlflow server` on a free port with its own SQLite store and proxied artifacts in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "server.log"
    process = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, log)
    except BaseException:
        stop_group(process)
        raise
    return MlflowServer(f"http://127.0.0.1:{port}", folder / "artifacts", process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    stop_group(server.process)


def digits(data_root: Path, tmp: Path, run_id: str, *overrides: str):
    return load(str(ROOT / "jobs/configs/sklearn_digits.yaml"), [
        f"data.root={data_root}", f"train.storage_path={tmp / 'runs'}", f"train.run_id={run_id}",
        "data.loader_workers=0", "train.log_every=5", *overrides])


def test_a_ray_train_run_logs_through_the_server_into_its_artifact_store(
        ray_local, mlflow_server: MlflowServer, sklearn_digits: Path, tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    config = digits(sklearn_digits.parent, tmp_path, "served", "train.num_workers=1", "train.epochs=1",
                    "train.checkpoint_every=10", f"tracking.uri={mlflow_server.uri}",
                    "tracking.experiment=served", "tracking.on_error=stop")
    result = train(config)

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "served"
    assert run.data.params["train.num_workers"] == "1" and run.data.params["codes.k"] == "5"
    # metrics come from the Ray Train controller's callback, a process other than this one
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert logged == [row["step"] for row in result["history"]] and logged
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert listed >= {"config.yaml", "final_checkpoint.txt", "checkpoint"}, listed
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/meta.json"]

    # the files are in the server's artifact store, and nowhere near this process's working dir
    stored = {p.relative_to(mlflow_server.artifacts).as_posix(): p for p in mlflow_server.artifacts.rglob("*")
              if p.is_file() and run.info.run_id in p.parts}
    by_name = {name.rsplit("/artifacts/", 1)[-1]: path for name, path in stored.items()}
    assert set(by_name) == {"config.yaml", "final_checkpoint.txt", "checkpoint/meta.json"}, stored
    assert by_name["config.yaml"].read_text() == config_yaml(tmp_path / "runs" / "served")
    assert by_name["final_checkpoint.txt"].read_text().strip() == result["checkpoint"]
    assert json.loads(by_name["checkpoint/meta.json"].read_text())["step"] == result["step"]
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlflow.db").exists()


def config_yaml(run_folder: Path) -> str:
    return (run_folder / "config.yaml").read_text()


def test_an_experiment_keeping_artifacts_on_one_machine_is_refused_on_a_server(
        mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(mlflow_server.uri).create_experiment("old-local", artifact_location=(tmp_path / "art").as_uri())
    config = digits(tmp_path, tmp_path, "old", f"tracking.uri={mlflow_server.uri}", "tracking.experiment=old-local")
    with pytest.raises(TrackingError, match="experiment 'old-local'.*one machine.*tracking.experiment"):
        Tracker(config).start(config)


JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}, "metadata": {
    "job_submission_id": "raysubmit_test"}})}  # what Ray's job supervisor gives its entrypoint


def test_a_ray_job_without_a_tracking_uri_is_refused_before_anything_is_written(
        sklearn_digits: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "acn_dist.cli", "train", "--config", str(ROOT / "jobs/configs/sklearn_digits.yaml"),
         "--set", f"data.root={sklearn_digits.parent}", "--set", f"train.storage_path={tmp_path / 'runs'}",
         "--set", "train.run_id=job"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**env, **JOB_ENV, "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert "Ray job raysubmit_test has no MLflow tracking URI" in line and "MLFLOW_TRACKING_URI" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_under_a_ray_job_only_locations_outside_its_working_dir_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for key, value in JOB_ENV.items():
        monkeypatch.setenv(key, value)
    shared = tmp_path.parent / f"{tmp_path.name}-shared"
    refused = {"tracking.uri=sqlite:///mlflow.db": "tracking.uri='sqlite:///mlflow.db' is inside",
               f"tracking.uri=sqlite:///{shared}/mlflow.db": "tracking.artifact_location=.*mlartifacts.* is inside"}
    for override, message in refused.items():
        with pytest.raises(TrackingError, match=message):
            check_location(load(None, [override]).tracking)
    for overrides in (["tracking.uri=http://mlflow.internal:5000"], ["tracking.enabled=false"],
                      [f"tracking.uri=sqlite:///{shared}/mlflow.db", f"tracking.artifact_location={shared.as_uri()}/art"]):
        check_location(load(None, overrides).tracking)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")  # from the job's runtime env
    check_location(load(None, []).tracking)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    check_location(load(None, []).tracking)  # outside a job the local default is fine
