"""Object storage: data and runs under `s3://` URIs, against a real S3-compatible server.

The server is moto's standalone server (`moto[server]`, a test dependency) started as a
subprocess on a free port; endpoint and credentials reach pyarrow the standard way
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), exactly as a user would set them for AWS or MinIO.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from acn_dist.config import Config, DataConfig, load
from acn_dist.data import DataError, ShardLoader, prepare
from acn_dist.errors import ConfigError, RunError
from acn_dist.runs.checkpoints import latest_checkpoint, load_checkpoint
from acn_dist.runs.lock import RunLock
from acn_dist.runs.storage import ObjectPath, location
from acn_dist.train.driver import train

boto3 = pytest.importorskip("boto3", reason="boto3 comes with moto[server] (pip install -e '.[test]')")
pytest.importorskip("moto.server", reason="moto[server] is a test dependency (pip install -e '.[test]')")

BUCKET = "acn"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    """A moto S3 server with an empty bucket `acn`; the AWS_* variables point at it meanwhile.
    Yields a boto3 client to look into the bucket."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start on port {port}") from None
                time.sleep(0.1)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def digits_data(root: str) -> DataConfig:
    return DataConfig(dataset="sklearn-digits", source="sklearn-digits", root=root, shard_size=200)


@pytest.fixture(scope="module")
def s3_digits(s3) -> ObjectPath:
    folder = prepare(digits_data(f"s3://{BUCKET}/data"), quiet=True)
    assert isinstance(folder, ObjectPath)
    return folder


def s3_config(run_id: str, *overrides: str) -> Config:
    return load("jobs/configs/sklearn_digits.yaml", [
        f"data.root=s3://{BUCKET}/data", f"train.storage_path=s3://{BUCKET}/runs", f"train.run_id={run_id}",
        "tracking.enabled=false", "train.log_every=5", "train.checkpoint_every=10", *overrides])


def test_prepare_writes_shards_and_manifest_to_the_bucket(s3, s3_digits: ObjectPath) -> None:
    written = keys(s3, "data/sklearn-digits/")
    assert "data/sklearn-digits/manifest.json" in written
    assert {"data/sklearn-digits/train-000000.tar", "data/sklearn-digits/test-000000.tar"} <= written
    assert not [key for key in written if "/." in key or "tmp" in key]  # no scratch left behind
    # preparing again finds the same dataset (every checksum verified from the bucket)
    assert str(prepare(digits_data(f"s3://{BUCKET}/data"), quiet=True, verify=True)) == str(s3_digits)
    ids = [int(i) for ids, _, _ in ShardLoader(s3_digits, "test", 64, shuffle=False).epoch(0) for i in ids]
    assert sorted(ids) == list(range(1437, 1797))


def test_local_training_checkpoints_into_the_bucket_and_resumes_there(s3, s3_digits: ObjectPath) -> None:
    first = train(s3_config("local", "train.max_steps=20", "data.loader_workers=1"))
    assert first["step"] == 20 and first["checkpoint"] == f"s3://{BUCKET}/runs/local/checkpoints/step-000000020"
    written = keys(s3, "runs/local/")
    for part in ("state.pt", "meta.json", "codes/table.npy", "codes/row_step.npy", "codes/header.json"):
        assert f"runs/local/checkpoints/step-000000020/{part}" in written
    assert {"runs/local/config.yaml", "runs/local/metrics.jsonl", "runs/local/final_checkpoint.txt"} <= written
    assert "runs/local/owner.json" not in written  # released at the end
    # the same run id resumes from the bucket's checkpoint and continues the step count
    second = train(s3_config("local", "train.max_steps=30", "data.loader_workers=0"))
    assert [row["step"] for row in second["history"]] == [25, 30]
    checkpoint = load_checkpoint(latest_checkpoint(location(f"s3://{BUCKET}/runs/local")))
    assert checkpoint.step == 30 and checkpoint.meta["config"]["train"]["storage_path"] == f"s3://{BUCKET}/runs"
    history = location(f"s3://{BUCKET}/runs/local/metrics.jsonl").read_text().splitlines()
    assert len(history) == 6  # 5, 10, 15, 20 then 25, 30


def test_a_flipped_byte_in_a_shard_in_the_bucket_is_refused(s3) -> None:
    folder = prepare(digits_data(f"s3://{BUCKET}/flipped"), quiet=True)
    key = "flipped/sklearn-digits/train-000001.tar"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[5000] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))  # same size: only the checksum sees it
    with pytest.raises(DataError, match=r"shard train-000001.tar: sha256 .* differs from the manifest"):
        for _ in ShardLoader(folder, "train", 64, shuffle=False).epoch(0):
            pass
    with pytest.raises(DataError, match="train-000001.tar"):
        prepare(digits_data(f"s3://{BUCKET}/flipped"), quiet=True, verify=True)


def test_the_run_lock_in_the_bucket_has_one_owner(s3) -> None:
    path = location(f"s3://{BUCKET}/locks/run/owner.json")
    with RunLock(path, "run", settle_s=0.2):
        with pytest.raises(RunError, match="already being trained by its owner"):
            RunLock(path, "run", settle_s=0.2).acquire()
    assert not path.exists()


def test_a_missing_bucket_is_refused_before_anything_starts(s3) -> None:
    with pytest.raises(ConfigError, match="train.storage_path='s3://no-such-bucket/runs': bucket 'no-such-bucket' does not exist"):
        train(s3_config("nobucket", "train.storage_path=s3://no-such-bucket/runs"))
    with pytest.raises(ConfigError, match="data.root='s3://no-such-bucket/data/sklearn-digits': bucket"):
        prepare(digits_data("s3://no-such-bucket/data"), quiet=True)


@pytest.mark.slow
def test_a_ray_train_worker_reads_and_checkpoints_through_the_bucket(s3, s3_digits: ObjectPath) -> None:
    import ray

    if ray.is_initialized():  # its workers were started without the AWS_* variables
        ray.shutdown()
    ray.init(num_cpus=3, log_to_driver=False, namespace="acn_dist_tests")
    try:
        result = train(s3_config("ray", "train.num_workers=1", "data.loader_workers=0", "train.max_steps=20",
                                 "codes.snapshot_every_s=0.5"))
    finally:
        ray.shutdown()
    assert result["step"] == 20
    written = keys(s3, "runs/ray/")
    for part in ("state.pt", "meta.json", "codes/table.npy", "codes/header.json"):
        assert f"runs/ray/checkpoints/step-000000020/{part}" in written
    assert any(key.startswith("runs/ray/codes/step-") and key.endswith("header.json") for key in written), \
        "the store actor's own snapshots go to the bucket too"


def test_a_run_in_the_bucket_is_evaluated_exported_and_searched_from_there(s3, s3_digits: ObjectPath,
                                                                           tmp_path) -> None:
    """What a user does after training on a cluster, with the run and the data only in the bucket."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from acn_dist.cli import main

    train(s3_config("used", "train.max_steps=10", "data.loader_workers=0"))
    where = ["--set", f"train.storage_path=s3://{BUCKET}/runs", "--set", f"data.root=s3://{BUCKET}/data",
             "--set", "tracking.enabled=false"]
    assert main(["evaluate", "--run", "used", "--no-figures", *where]) == 0
    metrics = json.loads(location(f"s3://{BUCKET}/runs/used/eval/metrics.json").read_text())
    assert metrics["checkpoint"] == f"s3://{BUCKET}/runs/used/checkpoints/step-000000010"
    assert 0 < metrics["knn_codes"] <= 1 and metrics["test_nats_per_image"] > 0
    out = tmp_path / "codes.parquet"
    assert main(["export", "--run", "used", "--out", str(out), *where]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 1797 and sorted(table.column("id").to_pylist()) == list(range(1797))
    assert main(["export", "--run", "used", *where]) == 0  # default: beside the run, in the bucket
    assert "runs/used/export/codes-step-000000010.parquet" in keys(s3, "runs/used/export/")
    exported = location(f"s3://{BUCKET}/runs/used/export/codes-step-000000010.parquet").read_bytes()
    assert pq.read_table(pa.BufferReader(exported)).equals(table)
    assert main(["sample", "--run", "used", "--count", "8", "--steps", "2", "--from", "1500", *where]) == 0
    assert {"runs/used/samples/prior_samples.png", "runs/used/samples/daydream.png",
            "runs/used/samples/daydream.npy"} <= keys(s3, "runs/used/samples/")
    assert main(["neighbours", "--run", "used", "--k", "3", "--out", str(tmp_path / "strip.png"), "12", *where]) == 0
    assert (tmp_path / "strip.png").stat().st_size > 0
