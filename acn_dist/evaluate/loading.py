"""A trained model back from its checkpoint, and finding the checkpoint a user means."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from acn_dist.config import Config, from_dict
from acn_dist.data.shards import dataset_folder, dataset_identity, read_manifest
from acn_dist.errors import EvaluationError
from acn_dist.model.acn import ACN, build_model
from acn_dist.runs.checkpoints import Checkpoint, latest_checkpoint, load_checkpoint
from acn_dist.runs.folder import RunFolder


@dataclass(frozen=True)
class Trained:
    """A model rebuilt from a checkpoint (on the CPU, in eval mode) with the config it was trained
    with and the checkpoint's metadata."""

    acn: ACN
    config: Config
    checkpoint: Checkpoint


def load_trained(checkpoint: str | Path) -> Trained:
    loaded = load_checkpoint(checkpoint)
    config = from_dict(loaded.meta["config"])
    acn = build_model(config, tuple(loaded.meta["image_shape"]))
    acn.load_state_dict(loaded.state["model"])
    acn.eval()
    return Trained(acn, config, loaded)


def with_settings(trained: Config, settings: Config) -> Config:
    """The trained config with this command's evaluation settings, data location and tracking."""
    return dataclasses.replace(trained, eval=settings.eval, tracking=settings.tracking,
                               data=dataclasses.replace(trained.data, root=settings.data.root))


def check_dataset(trained: Trained, config: Config, named: str | None = None) -> None:
    """Refuse data the model was not trained on: a dataset the user named (`named`) other than the
    checkpoint's, or a dataset folder whose manifest differs from the one recorded at training."""
    recorded = trained.checkpoint.meta.get("dataset", {})
    where = f"checkpoint {trained.checkpoint.path} was trained on {recorded.get('name')!r}"
    if named and named != recorded.get("name"):
        raise EvaluationError(f"{where}, not {named!r} (data.dataset of your --config/--set): evaluate it on "
                              f"{recorded.get('name')!r}, or a checkpoint trained on {named!r}")
    folder = dataset_folder(config.data)
    found = dataset_identity(read_manifest(folder))
    for key in ("image_shape", "train_count", "test_count", "fingerprint"):
        if recorded.get(key) is not None and found[key] != recorded[key]:
            raise EvaluationError(f"{where} with {key}={recorded[key]}; the dataset at {folder} has {key}={found[key]}: "
                                  "it is another dataset under the same name; point data.root at the data it was "
                                  "trained on")


def resolve_checkpoint(checkpoint: str | None, config: Config | None) -> Path:
    """An explicit checkpoint folder, a run folder, or the latest checkpoint of `train.run_id`."""
    if checkpoint:
        path = Path(checkpoint)
        if (path / "state.pt").is_file():
            return path
        found = latest_checkpoint(path)
        if found is None:
            raise EvaluationError(f"{path} holds no complete checkpoint (no state.pt, no checkpoints/step-*)")
        return found
    if config is None or not config.train.run_id:
        raise EvaluationError("say what to evaluate: --checkpoint PATH or --set train.run_id=RUN")
    run = RunFolder.at(config.train.storage_path, config.train.run_id)
    found = run.latest_checkpoint()
    if found is None:
        raise EvaluationError(f"run {config.train.run_id!r} has no checkpoint under {run.path}")
    return found
