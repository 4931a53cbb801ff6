"""The code-store Ray actor on a real local Ray instance."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from acn_dist.codes.actor import create_store_actor, get_store_actor
from acn_dist.codes.client import RayClient
from acn_dist.codes.store import StoreError
from acn_dist.config import CodesConfig
from tests.test_store import brute_force

SIZE, DIM = 3000, 8


def codes_config(**changes: object) -> dict:
    return dataclasses.asdict(dataclasses.replace(CodesConfig(), **changes))


@pytest.fixture
def actor(ray_local, request):
    run_id = request.node.name.replace("[", "-").replace("]", "")
    handle = create_store_actor(run_id, "", SIZE, DIM, codes_config(k=4))
    yield handle
    ray.kill(handle, no_restart=True)


def test_updates_are_visible_and_results_equal_brute_force(actor) -> None:
    client = RayClient(actor)
    rng = np.random.default_rng(0)
    ids = rng.choice(SIZE, 200, replace=False)
    codes = rng.standard_normal((200, DIM)).astype(np.float32)
    client.update(ids, codes, step=1)
    found = client.request_neighbours(ids, codes).result()  # exact mode: fresh codes, after the update
    table = ray.get(actor.table.remote())
    np.testing.assert_array_equal(table[ids], codes)
    expected_ids, expected_distances = brute_force(table, codes, ids, 4)
    np.testing.assert_array_equal(found.ids, expected_ids)
    np.testing.assert_allclose(found.distances, expected_distances, rtol=1e-4, atol=1e-4)
    assert not np.any(found.ids == ids[:, None])
    np.testing.assert_array_equal(found.neighbour_codes, table[found.neighbour_ids])
    assert client.wait_seconds > 0


def test_concurrent_queries_are_coalesced_and_each_gets_its_own_answer(actor) -> None:
    rng = np.random.default_rng(1)
    queries = [rng.choice(SIZE, 64, replace=False) for _ in range(30)]
    refs = [actor.neighbours.remote(q) for q in queries]  # prefetch mode: stored codes as queries
    results = ray.get(refs)
    table = ray.get(actor.table.remote())
    for ids, found in zip(queries, results):
        expected_ids, _ = brute_force(table, table[ids], ids, 4)
        np.testing.assert_array_equal(found.ids, expected_ids)
    stats = ray.get(actor.stats.remote())
    assert stats["coalesced_searches"] < 30, stats
    assert stats["query_rows"] == 30 * 64


@ray.remote
def writer(run_id: str, ids: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """Write `rounds` versions of rows `ids` while querying; return the last version written."""
    actor = get_store_actor(run_id)
    client = RayClient(actor, max_updates_in_flight=3)
    rng = np.random.default_rng(seed)
    last = None
    for step in range(rounds):
        last = rng.standard_normal((len(ids), DIM)).astype(np.float32)
        client.update(ids, last, step)
        found = client.request_neighbours(ids[:16]).result()
        assert not np.any(found.ids == ids[:16, None])
    client.flush()
    return last


def test_concurrent_updates_and_queries_keep_the_table_consistent(ray_local) -> None:
    run_id = "concurrent"
    actor = create_store_actor(run_id, "", SIZE, DIM, codes_config(k=4))
    try:
        parts = np.array_split(np.random.default_rng(2).permutation(SIZE), 4)
        lasts = ray.get([writer.remote(run_id, part, 25, seed) for seed, part in enumerate(parts)])
        table = ray.get(actor.table.remote())
        for part, last in zip(parts, lasts):
            np.testing.assert_array_equal(table[part], last)  # no lost or reordered update
        assert ray.get(actor.stats.remote())["rows_written"] == 25 * SIZE
    finally:
        ray.kill(actor, no_restart=True)


def test_snapshot_kill_new_actor_restore_gives_an_identical_table(ray_local, tmp_path: Path) -> None:
    first = create_store_actor("snap", "", SIZE, DIM, codes_config(k=4))
    client = RayClient(first)
    client.update(np.arange(100), np.full((100, DIM), 3.0, np.float32), step=9)
    client.snapshot(str(tmp_path / "snapshot"))
    before = ray.get(first.table.remote())
    ray.kill(first, no_restart=True)
    time.sleep(0.5)
    second = create_store_actor("snap", "", SIZE, DIM, codes_config(k=4, seed=123))
    try:
        assert not np.array_equal(ray.get(second.table.remote()), before)  # a fresh table
        RayClient(second).restore(str(tmp_path / "snapshot"))
        np.testing.assert_array_equal(ray.get(second.table.remote()), before)
        assert ray.get(second.stats.remote())["step"] == 9
    finally:
        ray.kill(second, no_restart=True)


def test_a_crashed_actor_restarts_from_the_latest_checkpoint(ray_local, tmp_path: Path) -> None:
    run = tmp_path / "run"
    actor = create_store_actor("crash", "", SIZE, DIM, codes_config(k=4), run_folder=str(run))
    try:
        client = RayClient(actor)
        client.update(np.arange(10), np.full((10, DIM), 7.0, np.float32), step=5)
        client.snapshot(str(run / "checkpoints" / "step-000000005" / "codes"))
        (run / "checkpoints" / "step-000000005" / "state.pt").write_bytes(b"")
        (run / "checkpoints" / "step-000000005" / "meta.json").write_text("{}")
        client.update(np.arange(10), np.full((10, DIM), 8.0, np.float32), step=6)  # after the checkpoint
        client.flush()
        assert ray.get(actor.stats.remote())["restored_from"] is None
        ray.kill(actor, no_restart=False)  # a crash: Ray restarts the actor (ray.kill is asynchronous)
        deadline = time.monotonic() + 60
        while ray.get(actor.stats.remote())["restored_from"] is None:  # calls retry across the restart
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.2)
        assert ray.get(actor.stats.remote())["restored_from"].endswith("step-000000005/codes")
        table = ray.get(actor.table.remote())
        np.testing.assert_array_equal(table[:10], np.full((10, DIM), 7.0, np.float32))
    finally:
        ray.kill(actor, no_restart=True)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.update.remote(np.array([SIZE]), np.zeros((1, DIM), np.float32)), f"id {SIZE} is outside"),
        (lambda a: a.update.remote(np.array([1.5]), np.zeros((1, DIM), np.float32)), "integer"),
        (lambda a: a.update.remote(np.array([1]), np.zeros((1, DIM + 1), np.float32)), "shape"),
        (lambda a: a.update.remote(np.array([1]), np.full((1, DIM), np.nan, np.float32)), "not finite"),
        (lambda a: a.neighbours.remote(np.array([-3])), "id -3 is outside"),
        (lambda a: a.neighbours.remote(np.array([1]), np.zeros((1, 2), np.float32)), "shape"),
        (lambda a: a.neighbours.remote(np.array([1]), None, SIZE), f"k={SIZE}"),
    ],
)
def test_bad_calls_are_refused_and_the_table_is_unchanged(actor, call, message) -> None:
    before = ray.get(actor.table.remote())
    with pytest.raises(StoreError, match=message):
        RayClient(actor).wait(call(actor))
    np.testing.assert_array_equal(ray.get(actor.table.remote()), before)
    assert ray.get(actor.ping.remote())  # and the actor still serves


def test_the_store_snapshots_on_its_own_and_a_crash_rewinds_at_most_to_the_newest(ray_local, tmp_path: Path) -> None:
    run = tmp_path / "run"
    actor = create_store_actor("own", "", SIZE, DIM, codes_config(k=4, snapshot_every_s=0.2), run_folder=str(run))
    try:
        client = RayClient(actor)
        for step in range(1, 16):
            client.update(np.arange(10), np.full((10, DIM), float(step), np.float32), step=step)
            client.flush()
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not (run / "codes").is_dir() or not any((run / "codes").iterdir()):
            assert time.monotonic() < deadline, "no snapshot of its own"
            time.sleep(0.1)
        time.sleep(0.5)  # at least one more interval: the last write (step 15) is in a snapshot
        snapshots = sorted(p.name for p in (run / "codes").iterdir() if not p.name.startswith("."))
        assert 1 <= len(snapshots) <= 2 and snapshots[-1] == "step-000000015", snapshots
        ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + 60
        while ray.get(actor.stats.remote())["restored_from"] is None:
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.2)
        assert ray.get(actor.stats.remote())["restored_from"].endswith("codes/step-000000015")
        np.testing.assert_array_equal(ray.get(actor.table.remote())[:10], np.full((10, DIM), 15.0, np.float32))
        client.update(np.arange(10), np.zeros((10, DIM), np.float32), step=18)  # training was at step 18
        client.flush()
        assert ray.get(actor.stats.remote())["rewound_steps"] == 2  # the updates of steps 16 and 17 were lost
    finally:
        ray.kill(actor, no_restart=True)
