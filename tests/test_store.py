"""The in-process code store: the contract the Ray actor serves remotely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acn_dist.codes.store import CodeStore, StoreError


def brute_force(table: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = ((queries[:, None, :] - table[None, :, :]) ** 2).sum(-1)
    distances[np.arange(len(ids)), ids] = np.inf  # self excluded
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def test_neighbours_equal_numpy_brute_force_with_self_excluded() -> None:
    store = CodeStore(500, 8, k=5, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.choice(500, 64, replace=False)
    codes = rng.standard_normal((64, 8)).astype(np.float32)
    store.update(ids, codes)
    found = store.neighbours(ids, codes)
    expected_ids, expected_distances = brute_force(store.table(), codes, ids, 5)
    np.testing.assert_array_equal(found.ids, expected_ids)
    np.testing.assert_allclose(found.distances, expected_distances, rtol=1e-4, atol=1e-4)
    assert found.neighbour_codes.shape == (64, 8)
    np.testing.assert_array_equal(found.neighbour_codes, store.table()[found.neighbour_ids])
    assert np.all(np.any(found.ids == found.neighbour_ids[:, None], axis=1))


def test_self_is_never_a_neighbour_even_when_codes_are_duplicated() -> None:
    store = CodeStore(50, 4, k=3)
    store.update(np.arange(50), np.zeros((50, 4), np.float32))  # every code identical
    ids = np.arange(50)
    for _ in range(5):
        found = store.neighbours(ids)
        assert not np.any(found.ids == ids[:, None])
        assert not np.any(found.neighbour_ids == ids)


def test_prefetch_queries_use_stored_codes_and_updates_are_visible() -> None:
    store = CodeStore(100, 2, k=1)
    far = np.full((100, 2), 100.0, np.float32) + np.arange(100, dtype=np.float32)[:, None] * 10
    store.update(np.arange(100), far)
    store.update(np.array([7, 42]), np.array([[0, 0], [0.1, 0]], np.float32))
    found = store.neighbours(np.array([7]))  # codes=None: row 7 is the query
    assert found.ids[0, 0] == 42 and found.neighbour_ids[0] == 42


def test_uniform_pick_covers_all_k() -> None:
    store = CodeStore(200, 4, k=5, seed=1)
    ids = np.zeros(4000, dtype=np.int64)
    found = store.neighbours(ids)
    positions = (found.ids == found.neighbour_ids[:, None]).argmax(axis=1)
    counts = np.bincount(positions, minlength=5)
    assert counts.min() > 4000 / 5 * 0.85, counts


def test_unique_neighbours_serve_each_row_once_per_pass_where_possible() -> None:
    store = CodeStore(300, 3, k=5, seed=0, unique_neighbours=True)
    picked = store.neighbours(np.arange(100)).neighbour_ids
    assert len(np.unique(picked)) + store.stats()["unique_fallbacks"] == 100


def test_snapshot_restore_round_trip(tmp_path: Path) -> None:
    store = CodeStore(100, 6, k=4, seed=5)
    store.update(np.arange(10), np.ones((10, 6), np.float32), step=17)
    store.neighbours(np.arange(5))
    store.snapshot(tmp_path / "snap")
    again = CodeStore(100, 6, k=4, seed=99)
    again.restore(tmp_path / "snap")
    np.testing.assert_array_equal(again.table(), store.table())
    assert again.step == 17 and again.stats()["rows_ever_written"] == 10
    # the RNG came back too: the same query picks the same neighbours
    np.testing.assert_array_equal(again.neighbours(np.arange(20)).neighbour_ids,
                                  store.neighbours(np.arange(20)).neighbour_ids)
    with pytest.raises(StoreError, match="100 x 6"):
        CodeStore(100, 7).restore(tmp_path / "snap")


@pytest.mark.parametrize(
    ("ids", "codes", "message"),
    [
        (np.array([0, 100]), np.zeros((2, 4), np.float32), "id 100 is outside"),
        (np.array([-1]), np.zeros((1, 4), np.float32), "id -1 is outside"),
        (np.array([0.5]), np.zeros((1, 4), np.float32), "integer"),
        (np.array([1]), np.zeros((1, 5), np.float32), r"shape \(1, 4\)"),
        (np.array([1]), np.array([[0, np.nan, 0, 0]], np.float32), "not finite"),
        (np.array([1]), np.zeros((1, 4), np.int32), "floating point"),
    ],
)
def test_bad_updates_are_refused_and_the_table_is_unchanged(ids, codes, message) -> None:
    store = CodeStore(100, 4)
    before = store.table()
    with pytest.raises(StoreError, match=message):
        store.update(ids, codes)
    np.testing.assert_array_equal(store.table(), before)


def test_k_must_leave_room_for_self_exclusion() -> None:
    with pytest.raises(StoreError, match="k=10"):
        CodeStore(10, 2, k=10)
