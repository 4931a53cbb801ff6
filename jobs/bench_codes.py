"""Code-store benchmark: raw faiss, the store through Ray, the GEMM bound, updates, IVF recall.

    python jobs/bench_codes.py [--sizes 60000 1000000] [--dims 16 128] [--batches 256 1024]
                               [--seconds 3] [--out bench_results/codes.json]

For each (N, D, batch): queries/s of raw faiss in this process (the same CPUExact backend the
store uses), of the store actor through Ray with one and with two concurrent clients (each keeping
two requests in flight, as a prefetching worker does), the GEMM bound (measured float32 GEMM
FLOP/s / (2 N D) FLOP per query), update rows/s through Ray, and for each (N, D) the recall@K and
queries/s of the IVF backend. Targets: store >= 0.9x raw faiss at batch >= 256; exact search
>= 60% of the GEMM bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
import torch

from acn_dist.codes.actor import create_store_actor, get_store_actor
from acn_dist.codes.client import RayClient
from acn_dist.codes.search import CPUExact, IVFApproximate, recall_at_k
from acn_dist.config import CodesConfig

K = 5


def gemm_flops(threads: int, size: int = 2048, seconds: float = 2.0) -> float:
    """Measured float32 GEMM FLOP/s of this machine (torch, `threads` threads)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def timed_rate(call, rows_per_call: int, seconds: float) -> float:
    call()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return rows_per_call * count / (time.perf_counter() - start)


@ray.remote(num_cpus=0)
def client_loop(run_id: str, queries: np.ndarray, seconds: float, in_flight: int = 2) -> tuple[int, float]:
    """Query the store with `in_flight` requests outstanding for `seconds`; (rows answered, wall)."""
    actor = get_store_actor(run_id)
    rows_per_call = len(queries)
    ids = np.arange(rows_per_call, dtype=np.int64)
    refs = [actor.neighbours.remote(ids, queries) for _ in range(in_flight)]
    answered, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ray.get(refs.pop(0))
        answered += rows_per_call
        refs.append(actor.neighbours.remote(ids, queries))
    for ref in refs:  # the requests still in flight count too: all work over all time
        ray.get(ref)
        answered += rows_per_call
    return answered, time.perf_counter() - start


def store_rate(run_id: str, queries: np.ndarray, clients: int, seconds: float) -> float:
    ray.get(client_loop.remote(run_id, queries, 0.3))  # warm-up
    results = ray.get([client_loop.remote(run_id, queries, seconds) for _ in range(clients)])
    return sum(rows for rows, _ in results) / max(wall for _, wall in results)


def update_rate(actor, size: int, dim: int, seconds: float, rows: int = 1024) -> float:
    client = RayClient(actor, max_updates_in_flight=4)
    codes = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    start, written = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        client.update(np.random.randint(0, size, rows), codes, 0)
        written += rows
    client.flush()
    return written / (time.perf_counter() - start)



def bench_table(size: int, dim: int, batches: list[int], seconds: float, threads: int, gemm: float,
                codes: CodesConfig) -> list[dict]:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((size, dim), dtype=np.float32)
    raw = CPUExact(table, threads=threads, blas_threshold=codes.blas_threshold)
    run_id = f"bench-{size}-{dim}"
    actor = create_store_actor(run_id, "", size, dim, dataclasses.asdict(codes))
    ivf = IVFApproximate(table, lists=codes.ivf_lists, probe=codes.ivf_probe, threads=threads)
    rows: list[dict] = []
    try:
        updates = update_rate(actor, size, dim, seconds)
        for batch in batches:
            queries = rng.standard_normal((batch, dim), dtype=np.float32)
            raw_qps = timed_rate(lambda q=queries: raw.search(q, K + 1), batch, seconds)
            one = store_rate(run_id, queries, 1, seconds)
            two = store_rate(run_id, queries, 2, seconds)
            exact_ids = raw.search(queries, K)[1]
            ivf_recall = recall_at_k(exact_ids, ivf.search(queries, K)[1])
            ivf_qps = timed_rate(lambda q=queries: ivf.search(q, K + 1), batch, seconds)
            bound = gemm / (2 * size * dim)
            row = {"N": size, "D": dim, "batch": batch, "raw_faiss_qps": raw_qps, "store_qps_1_client": one,
                   "store_qps_2_clients": two, "store_over_raw": max(one, two) / raw_qps,
                   "gemm_bound_qps": bound, "raw_over_gemm_bound": raw_qps / bound,
                   "update_rows_per_s": updates, "ivf_recall_at_k": ivf_recall, "ivf_qps": ivf_qps}
            rows.append(row)
            print(f"N={size:>8} D={dim:>3} batch={batch:>5} | raw {raw_qps:9.0f} q/s | store 1c {one:9.0f} "
                  f"2c {two:9.0f} ({row['store_over_raw']:.2f}x raw) | GEMM bound {bound:9.0f} "
                  f"({row['raw_over_gemm_bound']:.0%}) | updates {updates:9.0f} rows/s | "
                  f"IVF recall@{K} {ivf_recall:.3f} at {ivf_qps:8.0f} q/s", flush=True)
    finally:
        ray.kill(actor, no_restart=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window-ms", type=float, default=CodesConfig().batch_window_ms)
    parser.add_argument("--out", default="bench_results/codes.json")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    codes = CodesConfig(num_cpus=threads, batch_window_ms=args.window_ms)
    gemm = gemm_flops(threads)
    print(f"float32 GEMM: {gemm / 1e9:.1f} GFLOP/s with {threads} threads; store window {args.window_ms} ms")
    ray.init(num_cpus=threads + 2, include_dashboard=False, log_to_driver=False)
    results = []
    for size in args.sizes:
        for dim in args.dims:
            results += bench_table(size, dim, args.batches, args.seconds, threads, gemm, codes)
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gemm_flops": gemm, "threads": threads, "k": K,
                                          "window_ms": args.window_ms, "results": results}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
