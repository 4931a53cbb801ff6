"""The driver: one function builds everything from the config and trains.

`train(config)` with `train.num_workers=0` runs the loop in this process against an in-process
code store; with workers it runs Ray Train (see `acn_dist.train.distributed`).
"""

from __future__ import annotations

import time
from typing import Any

from acn_dist.codes.client import LocalClient
from acn_dist.codes.factory import build_store
from acn_dist.config import Config
from acn_dist.data.shards import prepare, read_manifest
from acn_dist.train.loop import Runtime, train_loop


def new_run_id(config: Config) -> str:
    return f"{config.data.dataset}-{config.model.objective}-{time.strftime('%Y%m%d-%H%M%S')}"


def ensure_run_id(config: Config) -> str:
    if not config.train.run_id:
        config.train.run_id = new_run_id(config)
    return config.train.run_id


def train_size(config: Config) -> int:
    return read_manifest(prepare(config.data, quiet=True))["splits"]["train"]["count"]


def train_local(config: Config) -> dict[str, Any]:
    """Algorithm 1 in one process: in-process code store, no Ray."""
    ensure_run_id(config)
    size = train_size(config)
    store = build_store(config.codes, size, config.model.code_size) if config.model.objective == "acn" else None
    runtime = Runtime(store=LocalClient(store) if store is not None else None)
    return train_loop(config, runtime)


def train(config: Config) -> dict[str, Any]:
    if config.train.num_workers == 0:
        return train_local(config)
    from acn_dist.train.distributed import train_distributed

    return train_distributed(config)
