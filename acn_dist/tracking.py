"""MLflow: the one place that knows MLflow.

The driver opens the run (name = tag `acn_dist.run_id` = the training run id; running again with
the same id continues the same MLflow run), logs the flattened config as params and, after
training, artifacts. During distributed training the only writer of metrics is the callback of
`Tracker.ray_train_callback`, which runs on the Ray Train controller and logs rank 0's reports.

The default store is a local SQLite file `mlflow.db` with artifacts under `mlartifacts/` (absolute
paths, so every process agrees); any tracking URI by `tracking.uri` or `MLFLOW_TRACKING_URI`. With
an `mlflow server` URI (http/https) artifacts go through the server into its artifact store
(`--serve-artifacts --artifacts-destination ...`), never to a path on one node's disk. Under a Ray
job the working directory is Ray's temporary copy: a store or artifact folder inside it is refused
(`check_location`), so a run never vanishes with its job.
An unreachable store warns and training goes on (`tracking.on_error=warn`) or stops (`stop`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from acn_dist.config import Config, TrackingConfig
from acn_dist.errors import TrackingError

RUN_TAG = "acn_dist.run_id"

__all__ = ["TrackingError", "Tracker", "check_location", "log_metrics", "ray_job", "tracking_uri"]


SERVER_SCHEMES = ("http", "https", "databricks")  # stores that keep (or proxy) artifacts themselves


def tracking_uri(config: TrackingConfig) -> str:
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in SERVER_SCHEMES


def artifact_location(config: TrackingConfig) -> str | None:
    """Where a new experiment keeps artifacts: the configured location; for a tracking server,
    None (the server's own store: `mlflow-artifacts:/` with `--serve-artifacts`); else a folder
    beside the local store."""
    if config.artifact_location:
        return config.artifact_location
    if is_server(tracking_uri(config)):
        return None
    return Path("mlartifacts").resolve().as_uri()


def ray_job() -> str:
    """The Ray job this process runs in, "" outside one: the submission id `ray job submit` gives
    its entrypoint (in RAY_JOB_CONFIG_JSON_ENV_VAR), or RAY_JOB_ID in Ray's worker processes."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if raw:
        try:
            metadata = json.loads(raw).get("metadata") or {}
        except (ValueError, AttributeError):
            metadata = {}
        return str(metadata.get("job_submission_id") or "submitted with `ray job submit`")
    return os.environ.get("RAY_JOB_ID", "")


def local_path(uri: str | None) -> Path | None:
    """The local file or folder a store or artifact URI names (sqlite, file, a plain path), else None."""
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve()
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(parts.path).resolve()
    return Path(uri).resolve() if not parts.scheme else None


def check_location(config: TrackingConfig) -> None:
    """Refuse, before anything is written, an MLflow location that would vanish with its Ray job:
    under `ray job submit` the working directory is Ray's temporary copy of `--working-dir`."""
    job = ray_job()
    if not config.enabled or not job:
        return
    if not (config.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise TrackingError(
            f"Ray job {job} has no MLflow tracking URI, and the default SQLite file would live in the job's "
            "temporary working dir and vanish with it; set MLFLOW_TRACKING_URI (runtime env env_vars) or "
            "tracking.uri to an `mlflow server` (http://HEAD:5000), or tracking.enabled=false")
    workdir = Path.cwd().resolve()
    for key, value in (("tracking.uri", tracking_uri(config)),
                       ("tracking.artifact_location", artifact_location(config))):
        path = local_path(value)
        if path is not None and path.is_relative_to(workdir):
            raise TrackingError(
                f"{key}={value!r} is inside the temporary working dir of Ray job {job} ({workdir}), which "
                "vanishes with the job; use an `mlflow server` URI (http://HEAD:5000) or an absolute path "
                "on shared storage")


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))}


class Tracker:
    """The driver's MLflow run. Every method is a no-op once tracking is disabled or failed."""

    def __init__(self, config: Config):
        self.config = config.tracking
        self.uri = tracking_uri(self.config)
        self.run_id: str | None = None
        self.client: Any = None
        self.failed = False

    @property
    def active(self) -> bool:
        return self.config.enabled and not self.failed and self.run_id is not None

    def _failure(self, what: str, error: Exception) -> None:
        message = f"MLflow ({self.uri}): {what} failed: {type(error).__name__}: {error}"
        if self.config.on_error == "stop":
            raise TrackingError(f"{message}. Fix the tracking URI or set tracking.on_error=warn") from error
        print(f"warning: {message}; training goes on without tracking (tracking.on_error=warn)",
              file=sys.stderr, flush=True)
        self.failed = True

    def start(self, config: Config) -> str | None:
        """Open (or reopen, for a resumed run id) the MLflow run; returns its MLflow run id."""
        if not self.config.enabled:
            return None
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(self.config.experiment)
        except Exception as error:  # noqa: BLE001  (any store failure: by config, warn or stop)
            self._failure("opening the run", error)
            return None
        if experiment is not None:
            self.refuse_local_artifacts(experiment.artifact_location)
        try:
            experiment_id = (experiment.experiment_id if experiment else self.client.create_experiment(
                self.config.experiment, artifact_location=artifact_location(self.config)))
            found = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{config.train.run_id}'", max_results=1)
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                run = self.client.create_run(experiment_id, run_name=config.train.run_id,
                                             tags={RUN_TAG: config.train.run_id})
                self.run_id = run.info.run_id
                self.log_params(config.flat())
        except Exception as error:  # noqa: BLE001  (any store failure: by config, warn or stop)
            self._failure("opening the run", error)
        return self.run_id

    def refuse_local_artifacts(self, location: str) -> None:
        """An experiment made earlier with artifacts on a local path would send this run's artifacts
        to one node's disk, not through the tracking server: refuse it, naming the way out."""
        if not is_server(self.uri) or self.config.artifact_location or local_path(location) is None:
            return
        raise TrackingError(
            f"MLflow experiment {self.config.experiment!r} at {self.uri} keeps its artifacts at {location}, a "
            "path on one machine, not in the server's artifact store; set tracking.experiment to a new name "
            "(created with the server's store) or tracking.artifact_location to shared storage")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active:
            return
        try:
            log_metrics(self.client, self.run_id, metrics, step)
        except Exception as error:  # noqa: BLE001
            self._failure("logging metrics", error)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if not self.active:
            return
        try:
            self.client.log_artifact(self.run_id, str(path), folder)
        except Exception as error:  # noqa: BLE001
            self._failure(f"logging artifact {path}", error)

    def log_text(self, text: str, artifact_file: str) -> None:
        """An artifact from memory (the config, checkpoint metadata): nothing needs to be on this
        node's disk, so it works for object-storage run folders too."""
        if not self.active:
            return
        try:
            self.client.log_text(self.run_id, text, artifact_file)
        except Exception as error:  # noqa: BLE001
            self._failure(f"logging artifact {artifact_file}", error)

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n", artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)

    def ray_train_callback(self) -> Any:
        """A Ray Train `UserCallback` that logs rank 0's reports (and the slowest rank's store
        wait) into this run from the controller process: the only writer during training."""
        from ray.train import UserCallback

        uri, mlflow_run_id = self.uri, self.run_id

        class MLflowCallback(UserCallback):
            def __init__(self) -> None:
                self.client: Any = None
                self.failed = False

            def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
                if self.failed or not metrics:
                    return
                main = dict(metrics[0])
                main["store_wait_ms_max_rank"] = max(m.get("store_wait_ms", 0.0) for m in metrics)
                try:
                    if self.client is None:
                        from mlflow.tracking import MlflowClient

                        self.client = MlflowClient(tracking_uri=uri)
                    log_metrics(self.client, mlflow_run_id,
                                {k: v for k, v in main.items() if k not in ("step", "rank")}, int(main["step"]))
                except Exception as error:  # noqa: BLE001  (tracking must never stop training here)
                    print(f"warning: MLflow logging stopped: {type(error).__name__}: {error}", flush=True)
                    self.failed = True

        return MLflowCallback()

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as error:  # noqa: BLE001
                self._failure("closing the run", error)


def log_metrics(client: Any, run_id: str, metrics: dict[str, Any], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, step)
                                      for key, value in finite_metrics(metrics).items()])

