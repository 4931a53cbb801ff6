"""The code store at scale: recall, memory, update/query throughput and per-step cost at 1M-10M codes.

    python jobs/bench_store_scale.py --codes RUN_OR_SNAPSHOT [--sizes 1000000 10000000] [--dims 16]
        [--lists 1024 4096] [--probes 4 8 16 32] [--threads 1] [--actor-size 1000000]
        [--out bench_results/store_scale.json]

Codes. Random Gaussian codes are the worst case for an approximate index (no clusters); the codes
of a trained model cluster. `--codes` names a trained run folder (its newest code-table snapshot
is used), a snapshot folder or a `table.npy`. An N-row table is built from those M real codes as
a kernel density sample: row i = real[i mod M] + sigma * e, e ~ N(0, I_D), with sigma chosen so
that the expected jitter length sigma * sqrt(D) is `--jitter` (default 1.0) times the median
distance of a real code to its nearest other real code: copies of one datum overlap their
neighbours' copies, as the codes of N similar-but-different data would. For D > the real codes'
dimension (e.g. 128) the real codes are first mapped by a random orthonormal map (a 16-dim
manifold in 128 dims), then jittered in all D dimensions. `--random` adds the N(0, 1) table for
comparison (the worst case, and the store's initial table).

Figures, per (N, D) and backend (flat = exact brute force, CPUExact; ivf = IVFApproximate with
each nlist/nprobe):
- recall@K (K=5) against exact search, queries = stored codes of random ids, self excluded (what
  the store returns: search K+1, drop the query's own id);
- bytes/code: the table (4 D) + the index's own structures (IVF: list codes, list ids, direct map,
  centroids; counted from faiss), and the process RSS growth while the backend was built;
- updates/s: rows written per second through `CodeStore.update` at batch 128, 1024, 8192;
- queries/s: rows answered per second through `CodeStore.neighbours` at batch 128, K=5;
- IVF (re)build seconds (k-means on a sample + assigning every row), paid once per pass of
  writes (`codes.ivf_rebuild_every`, 0 = the table size).
With `--actor-size N`: the store actor on its own CPUs (`--actor-cpus`, faiss threads = its CPUs)
serving one trainer-like client at batch 128: exact mode (update then search with the fresh codes,
waiting for the answer: Algorithm 1) and prefetch mode (the next batch's search requested one
step ahead, stored codes) as milliseconds per step with no model compute in between, i.e. the
store's own cost per step. bench_train.py turns it into an ACN/VAE ratio.

faiss OpenMP threads are set on purpose (`--threads`, default 1); the BLAS threshold is the
store's (20). Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from acn_dist.codes.search import CPUExact, IVFApproximate, configure_faiss, faiss, recall_at_k
from acn_dist.codes.store import CodeStore
from acn_dist.config import CodesConfig

K = 5


# --- the code table ---------------------------------------------------------------------------

def load_real_codes(path: str) -> np.ndarray:
    """The table of a run (newest snapshot under it), a snapshot folder or a table.npy file."""
    source = Path(path)
    if source.is_dir() and not (source / "table.npy").is_file():
        tables = sorted(source.rglob("table.npy"), key=lambda p: p.stat().st_mtime)
        if not tables:
            raise SystemExit(f"{path}: no code-table snapshot (table.npy) under it")
        source = tables[-1]
    elif source.is_dir():
        source = source / "table.npy"
    print(f"real codes: {source}")
    return np.load(source).astype(np.float32)


def nearest_other_distance(codes: np.ndarray, sample: int = 5000, seed: int = 0) -> float:
    """Median Euclidean distance of a code to its nearest other code."""
    picks = np.random.default_rng(seed).choice(len(codes), min(sample, len(codes)), replace=False)
    distances, _ = faiss.knn(np.ascontiguousarray(codes[picks]), codes, 2)
    return float(np.median(np.sqrt(np.maximum(distances[:, 1], 0))))


def clustered_table(real: np.ndarray, size: int, dim: int, jitter: float, seed: int = 0) -> tuple[np.ndarray, dict]:
    """`size` rows: the real codes repeated, each copy jittered (a kernel density sample)."""
    rng = np.random.default_rng(seed)
    if dim != real.shape[1]:  # a low-dimensional manifold embedded in `dim` dimensions
        basis, _ = np.linalg.qr(rng.standard_normal((dim, real.shape[1])))
        real = (real @ basis.T.astype(np.float32)).astype(np.float32)
    spacing = nearest_other_distance(real)
    sigma = jitter * spacing / np.sqrt(dim)
    table = np.empty((size, dim), dtype=np.float32)
    chunk = 1 << 20
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        table[start:stop] = real[np.arange(start, stop) % len(real)]
        table[start:stop] += sigma * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return table, {"real_codes": len(real), "real_nn_distance": spacing, "jitter": jitter, "sigma": float(sigma)}


# --- measuring --------------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rate(call, rows_per_call: int, seconds: float, min_calls: int = 3) -> float:
    """Rows per second of `call` (one warm-up call, then at least `min_calls` for `seconds`)."""
    call()
    count, start = 0, time.perf_counter()
    while count < min_calls or time.perf_counter() - start < seconds:
        call()
        count += 1
    return rows_per_call * count / (time.perf_counter() - start)


def neighbours_of_stored(backend, table: np.ndarray, ids: np.ndarray, k: int = K) -> np.ndarray:
    """The store's answer for stored codes: K+1 nearest, the query's own id dropped."""
    found = backend.search(np.ascontiguousarray(table[ids]), k + 1)[1]
    keep = found != ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, order, axis=1)


def ivf_index_bytes(ivf: IVFApproximate) -> int:
    """Bytes of the IVF index's own structures: list codes and ids, direct map, centroids."""
    index = ivf.index
    invlists = index.invlists
    listed = sum(invlists.list_size(i) for i in range(index.nlist))
    direct = 8 * index.ntotal if index.direct_map.type == faiss.DirectMap.Array else 24 * index.ntotal
    return listed * (index.code_size + 8) + direct + index.nlist * index.d * 4


def store_rates(store: CodeStore, table: np.ndarray, seconds: float, update_batches: list[int]) -> dict:
    """updates/s at each batch (rows rewritten with their own codes: the table does not change)
    and queries/s at batch 128 through the store (K=5, self excluded)."""
    rng = np.random.default_rng(1)
    out = {}
    for batch in update_batches:
        ids = rng.choice(store.size, batch, replace=False)
        codes = table[ids].copy()
        out[f"updates_per_s_b{batch}"] = rate(lambda i=ids, c=codes: store.update(i, c), batch, seconds)
    ids = rng.choice(store.size, 128, replace=False)
    codes = table[ids].copy()
    out["queries_per_s_b128"] = rate(lambda: store.neighbours(ids, codes), 128, seconds)
    return out


def bench_size(table: np.ndarray, label: str, lists: list[int], probes: list[int], threads: int,
               seconds: float, queries: int, update_batches: list[int], flat: bool) -> list[dict]:
    size, dim = table.shape
    query_ids = np.random.default_rng(2).choice(size, queries, replace=False)
    exact = CPUExact(table, threads=threads)  # shares `table`: every update below writes the same codes back
    start = time.perf_counter()
    truth = neighbours_of_stored(exact, table, query_ids)
    exact_seconds = time.perf_counter() - start
    rows: list[dict] = []
    base = {"N": size, "D": dim, "codes": label, "threads": threads}
    if flat:
        store = CodeStore(size, dim, k=K, backend=exact)
        row = {**base, "backend": "flat", "nlist": None, "nprobe": None, "recall_at_5": 1.0,
               "bytes_per_code": 4 * dim, "index_bytes_per_code": 0.0,
               "store_bytes_per_code": store_overhead_bytes(store) / size,
               **store_rates(store, table, seconds, update_batches)}
        rows.append(row)
        show(row)
    for nlist in lists:
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        ivf = IVFApproximate(table, lists=nlist, probe=probes[0], rebuild_every=1 << 62, threads=threads)
        build_seconds = time.perf_counter() - start
        rss_growth = rss_bytes() - before
        store = CodeStore(size, dim, k=K, backend=ivf)
        for nprobe in probes:
            ivf.set_probe(nprobe)
            recall = recall_at_k(truth, neighbours_of_stored(ivf, table, query_ids))
            row = {**base, "backend": "ivf", "nlist": ivf.lists, "nprobe": nprobe, "recall_at_5": recall,
                   "bytes_per_code": 4 * dim + ivf_index_bytes(ivf) / size,
                   "index_bytes_per_code": ivf_index_bytes(ivf) / size, "rss_growth_per_code": rss_growth / size,
                   "store_bytes_per_code": store_overhead_bytes(store) / size, "build_s": build_seconds,
                   **store_rates(store, table, seconds, update_batches)}
            rows.append(row)
            show(row)
        del store, ivf
    for row in rows:
        row["exact_truth_s"] = exact_seconds
    return rows


def store_overhead_bytes(store: CodeStore) -> int:
    """The store's per-row bookkeeping (row steps, written and used flags)."""
    return store.row_step.nbytes + store.written.nbytes + store.used.nbytes


def show(row: dict) -> None:
    setting = f"{row['nlist']}/{row['nprobe']}" if row["backend"] == "ivf" else "-"
    updates = " ".join(f"{row[key]:9.0f}" for key in row if key.startswith("updates_per_s"))
    print(f"N={row['N']:>9} D={row['D']:>3} {row['codes']:>9} {row['backend']:>4} {setting:>11} | "
          f"{row['bytes_per_code']:6.1f} B/code | updates/s {updates} | queries/s {row['queries_per_s_b128']:9.0f} | "
          f"recall@5 {row['recall_at_5']:.3f}" + (f" | build {row['build_s']:.1f} s" if "build_s" in row else ""),
          flush=True)


# --- the store actor on its own CPUs ----------------------------------------------------------

def actor_step_costs(table: np.ndarray, codes: CodesConfig, seconds: float, batch: int = 128) -> dict:
    """Milliseconds per training step that the store actor costs: exact mode (update, then the
    fresh codes' search; wait) and prefetch mode (next batch's search requested a step ahead)."""
    import ray

    from acn_dist.codes.actor import create_store_actor
    from acn_dist.codes.store import CodeStore as Store

    size, dim = table.shape
    scratch = Path(tempfile.mkdtemp(prefix="store-scale-"))
    try:
        seed_store = Store(size, dim, k=codes.k, backend=CPUExact(table))
        seed_store.snapshot(scratch / "snapshot")
        del seed_store
        config = dataclasses.replace(codes, snapshot_every_s=0.0, ivf_rebuild_every=0)
        actor = create_store_actor(f"scale-{codes.backend}-{codes.num_cpus}", "", size, dim, dataclasses.asdict(config))
        ray.get(actor.restore.remote(str(scratch / "snapshot")))  # the clustered table (IVF: rebuilt on it)
        rng = np.random.default_rng(3)
        order = rng.permutation(size)

        def batches():
            step = 0
            while True:
                ids = order[(step * batch) % (size - batch):][:batch]
                fresh = table[ids] + 0.01 * rng.standard_normal((batch, dim), dtype=np.float32)
                yield step, ids, fresh
                step += 1

        def exact_loop() -> list[float]:
            times, stream = [], batches()
            updates: list = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                step, ids, fresh = next(stream)
                began = time.perf_counter()
                updates.append(actor.update.remote(ids, fresh, step))
                ray.get(actor.neighbours.remote(ids, fresh, None, False))
                times.append(time.perf_counter() - began)
                if len(updates) > codes.max_updates_in_flight:
                    ray.get(updates.pop(0))
            ray.get(updates)
            return times

        def prefetch_loop() -> list[float]:
            times, stream = [], batches()
            step, ids, fresh = next(stream)
            pending = actor.neighbours.remote(ids, None, None, False)
            updates: list = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                began = time.perf_counter()
                next_step, next_ids, next_fresh = next(stream)
                following = actor.neighbours.remote(next_ids, None, None, False)  # one step ahead
                updates.append(actor.update.remote(ids, fresh, step))
                ray.get(pending)
                times.append(time.perf_counter() - began)
                pending, step, ids, fresh = following, next_step, next_ids, next_fresh
                if len(updates) > codes.max_updates_in_flight:
                    ray.get(updates.pop(0))
            ray.get(updates + [pending])
            return times

        exact_loop()  # warm-up
        result = {"backend": codes.backend, "nlist": codes.ivf_lists, "nprobe": codes.ivf_probe,
                  "num_cpus": codes.num_cpus, "N": size, "D": dim, "batch": batch}
        for name, loop in (("exact", exact_loop), ("prefetch", prefetch_loop)):
            first, second = loop(), loop()  # each timing repeated once
            result[f"{name}_ms_per_step"] = [1000 * float(np.median(first)), 1000 * float(np.median(second))]
        stats = ray.get(actor.stats.remote())
        result["store_update_p50_ms"] = stats["update_latency"]["p50_ms"]
        result["store_neighbours_p50_ms"] = stats["neighbours_latency"]["p50_ms"]
        ray.kill(actor, no_restart=True)
        print(f"actor N={size} D={dim} {codes.backend:>4} cpus={codes.num_cpus} | exact "
              f"{'/'.join(f'{v:.1f}' for v in result['exact_ms_per_step'])} ms/step | prefetch "
              f"{'/'.join(f'{v:.1f}' for v in result['prefetch_ms_per_step'])} ms/step | in the store: update "
              f"{result['store_update_p50_ms']:.2f} ms, search {result['store_neighbours_p50_ms']:.2f} ms (p50)",
              flush=True)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", help="trained run folder, snapshot folder or table.npy (default: random codes only)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[16])
    parser.add_argument("--lists", type=int, nargs="+", default=[CodesConfig().ivf_lists])
    parser.add_argument("--probes", type=int, nargs="+", default=[CodesConfig().ivf_probe])
    parser.add_argument("--jitter", type=float, default=1.0)
    parser.add_argument("--random", action="store_true", help="also the N(0, 1) table (the worst case)")
    parser.add_argument("--no-flat", action="store_true", help="skip the exact (flat) rows")
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--update-batches", type=int, nargs="+", default=[128, 1024, 8192])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--actor-size", type=int, default=0, help="also time the store actor at this N (0 = skip)")
    parser.add_argument("--actor-cpus", type=int, nargs="+", default=[1])
    parser.add_argument("--actor-backends", nargs="+", default=["ivf", "cpu"], choices=["ivf", "cpu", "gpu"],
                        help="gpu: the sharded GPU backend, skipped where no CUDA device is visible")
    parser.add_argument("--out", default="bench_results/store_scale.json")
    args = parser.parse_args()
    configure_faiss(args.threads, CodesConfig().blas_threshold)
    real = load_real_codes(args.codes) if args.codes else None
    results: list[dict] = []
    tables: list[dict] = []
    actor_rows: list[dict] = []
    for size in args.sizes:
        for dim in args.dims:
            kinds = (["trained"] if real is not None else []) + (["random"] if args.random or real is None else [])
            for kind in kinds:
                if kind == "trained":
                    table, info = clustered_table(real, size, dim, args.jitter)
                else:
                    table = np.random.default_rng(0).standard_normal((size, dim), dtype=np.float32)
                    info = {}
                tables.append({"N": size, "D": dim, "codes": kind, **info})
                results += bench_size(table, kind, args.lists, args.probes, args.threads, args.seconds,
                                      args.queries, args.update_batches, flat=not args.no_flat)
                if args.actor_size == size and kind == kinds[0] and dim == args.dims[0]:
                    import ray

                    ray.init(num_cpus=max(args.actor_cpus) + 2, include_dashboard=False, log_to_driver=False)
                    for backend in args.actor_backends:
                        if backend == "gpu" and not gpu_visible():
                            print("actor gpu: skipped, no CUDA device visible (faiss-gpu on a GPU node measures it)")
                            actor_rows.append({"backend": "gpu", "skipped": "no CUDA device visible"})
                            continue
                        for cpus in args.actor_cpus:
                            codes = CodesConfig(backend=backend, num_cpus=cpus, num_gpus=int(backend == "gpu"))
                            actor_rows.append(actor_step_costs(table, codes, args.seconds * 2))
                    ray.shutdown()
                del table
                gc.collect()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "k": K, "threads": args.threads, "cpu_count": os.cpu_count(), "defaults": dataclasses.asdict(CodesConfig()),
        "tables": tables, "results": results, "actor": actor_rows}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
