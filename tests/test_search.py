"""Search backends behind one interface: exact CPU, sharded exact, approximate IVF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acn_dist.codes.factory import build_store
from acn_dist.codes.search import CPUExact, IVFApproximate, ShardedExact, merge_top_k, recall_at_k
from acn_dist.codes.store import CodeStore, StoreError
from acn_dist.config import CodesConfig


def data(size: int = 5000, dim: int = 16, queries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((size, dim), dtype=np.float32), rng.standard_normal((queries, dim), dtype=np.float32)


def test_merge_top_k_keeps_the_k_smallest_across_shards() -> None:
    distances = [np.array([[1.0, 4.0]]), np.array([[0.5, 3.0]]), np.array([[2.0, 9.0]])]
    ids = [np.array([[10, 11]]), np.array([[20, 21]]), np.array([[30, 31]])]
    merged_distances, merged_ids = merge_top_k(distances, ids, 3)
    np.testing.assert_array_equal(merged_ids, [[20, 10, 30]])
    np.testing.assert_array_equal(merged_distances, [[0.5, 1.0, 2.0]])


@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_exact_equals_cpu_exact_and_writes_land_in_the_right_shard(shards: int) -> None:
    table, queries = data()
    exact, sharded = CPUExact(table.copy()), ShardedExact(table.copy(), ["cpu"] * shards)
    rows = np.array([0, 1666, 1667, 4999])
    codes = np.random.default_rng(1).standard_normal((4, 16), dtype=np.float32)
    for backend in (exact, sharded):
        backend.write(rows, codes)
    np.testing.assert_array_equal(sharded.table(), exact.table())
    np.testing.assert_array_equal(sharded.rows(rows), codes)
    d_exact, i_exact = exact.search(queries, 7)
    d_sharded, i_sharded = sharded.search(queries, 7)
    np.testing.assert_array_equal(i_sharded, i_exact)
    np.testing.assert_allclose(d_sharded, d_exact, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU backend runs on GPU machines only")
def test_gpu_sharded_exact_equals_cpu_exact() -> None:
    table, queries = data(50_000)
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    d_exact, i_exact = CPUExact(table.copy()).search(queries, 5)
    d_gpu, i_gpu = ShardedExact(table.copy(), gpus).search(queries, 5)
    assert (i_gpu == i_exact).mean() > 0.999
    np.testing.assert_allclose(d_gpu, d_exact, rtol=1e-3, atol=1e-3)


def test_gpu_backend_without_a_gpu_says_what_to_do() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(StoreError, match="codes.backend=cpu"):
        build_store(CodesConfig(backend="gpu"), 100, 4)



def test_ivf_recall_is_high_and_follows_updates_and_rebuilds() -> None:
    table, queries = data(20_000)
    exact = CPUExact(table.copy())
    ivf = IVFApproximate(table.copy(), lists=64, probe=16, rebuild_every=3000, rebuild_imbalance=0)
    assert recall_at_k(exact.search(queries, 5)[1], ivf.search(queries, 5)[1]) > 0.9
    rng = np.random.default_rng(3)
    for _ in range(4):  # codes drift: 4 x 1000 rows moved, one rebuild on the way
        rows = rng.choice(20_000, 1000, replace=False)
        moved = rng.standard_normal((1000, 16), dtype=np.float32) * 1.5
        exact.write(rows, moved)
        ivf.write(rows, moved)
    assert ivf.rebuilds == 2
    np.testing.assert_array_equal(ivf.table(), exact.table())
    assert recall_at_k(exact.search(queries, 5)[1], ivf.search(queries, 5)[1]) > 0.9
    found = ivf.search(moved[:20], 1)[1][:, 0]  # a moved row is found at its new place
    np.testing.assert_array_equal(found, rows[:20])


def clustered_codes(size: int, dim: int = 16, centres: int = 300, seed: int = 0) -> np.ndarray:
    """Codes like a trained model's: clusters on a 6-dim subspace, scale ~5, a little noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, 6)))[0]
    middle = 5 * rng.standard_normal((centres, 6))
    low = middle[rng.integers(0, centres, size)] + rng.standard_normal((size, 6))
    return (low @ basis.T + 0.1 * rng.standard_normal((size, dim))).astype(np.float32)


def test_ivf_defaults_give_recall_above_0_9_on_clustered_codes() -> None:
    size, codes = 40_000, clustered_codes(40_000)
    store = build_store(CodesConfig(backend="ivf"), size, 16)  # the defaults, on the N(0, 1) table
    store.update(np.arange(size), codes)  # a whole pass written: the quantiser is retrained on it
    exact = CodeStore(size, 16, backend=CPUExact(codes.copy()))
    ids = np.random.default_rng(1).choice(size, 500, replace=False)
    truth = exact.nearest(ids, codes[ids], 5)[0]
    found = store.nearest(ids, codes[ids], 5)[0]
    assert recall_at_k(truth, found) >= 0.9


def test_ivf_rebuilds_when_written_codes_unbalance_its_lists() -> None:
    table = np.random.default_rng(0).standard_normal((20_000, 16), dtype=np.float32)
    ivf = IVFApproximate(table, lists=256, probe=8, rebuild_every=1 << 40, rebuild_imbalance=4.0)
    assert ivf.rebuilds == 1 and ivf.imbalance() < 2
    codes = clustered_codes(20_000, seed=2) + 20  # trained codes far from the initial ones
    rows = np.random.default_rng(3).permutation(20_000)
    for start in range(0, 20_000, 1000):  # a pass of writes, in batches
        ivf.write(rows[start:start + 1000], codes[rows[start:start + 1000]])
    assert ivf.rebuilds >= 2 and ivf.imbalance() < 4.0
    found = ivf.search(codes[:50], 1)[1][:, 0]  # every row is found at its new place
    np.testing.assert_array_equal(found, np.arange(50))


def test_store_on_ivf_backend_still_excludes_self() -> None:
    store = build_store(CodesConfig(backend="ivf", ivf_lists=16, ivf_probe=4, k=3), 2000, 4)
    assert isinstance(store, CodeStore)
    ids = np.arange(500)
    found = store.neighbours(ids)
    assert not np.any(found.ids == ids[:, None])


@pytest.mark.parametrize("backend", ["cpu", "ivf"])
def test_a_store_in_the_training_process_leaves_torchs_threads_alone(backend: str) -> None:
    """faiss and torch share OpenMP's thread count: a store built beside the training step must
    not make the step single-threaded; only a store in its own process (the actor) sets it."""
    import faiss

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        build_store(CodesConfig(backend=backend, ivf_lists=8), 2000, 8)
        assert torch.get_num_threads() == 3
        build_store(CodesConfig(backend=backend, ivf_lists=8), 2000, 8, threads=1)
        assert faiss.omp_get_max_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
