"""Fault injection and bad inputs: kill a training worker, the code-store actor and the driver
mid-run and report for each whether the run finished, the steps redone and the wall time lost
against a clean run; then try every bad input of `tests/bad_inputs.py` through `acn-dist` and
report whether each was refused (exit code 2) with one line naming the culprit, and lost nothing.

    python jobs/chaos.py [--config jobs/configs/sklearn_digits.yaml] [--set key=value ...]
                         [--out bench_results/chaos.json] [--bad-inputs-only]

Then the load test: many concurrent clients (default 8 x 10,000 calls, updates and queries mixed)
on one store actor: lost updates and latency percentiles.

Each scenario is a fresh run of the config (2 Ray Train workers, FailureConfig(max_failures=2),
a checkpoint every `train.checkpoint_every` steps) on a local Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acn_dist.config import load  # noqa: E402
from acn_dist.train.driver import train  # noqa: E402
from tests.bad_inputs import run_suite  # noqa: E402  (test tooling, from the repository root)
from tests.bad_inputs import table as bad_input_table  # noqa: E402
from tests.faults import (  # noqa: E402
    FaultReport,
    driver_fault,
    in_run_fault,
    kill_a_worker,
    kill_the_store,
    run_of,
    store_load,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/sklearn_digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--storage", default="runs/chaos")
    parser.add_argument("--out", default="bench_results/chaos.json")
    parser.add_argument("--load-clients", type=int, default=8)
    parser.add_argument("--load-calls", type=int, default=10_000, help="calls per client in the load test")
    parser.add_argument("--bad-inputs-only", action="store_true",
                        help="only the bad-input table (a few minutes; no training runs, no load test)")
    args = parser.parse_args()
    if args.bad_inputs_only:
        return bad_inputs_alone(args.out)
    stamp = time.strftime("%H%M%S")
    base = ["train.num_workers=2", "train.max_failures=2", "train.epochs=8", "train.checkpoint_every=20",
            "train.log_every=5", "tracking.enabled=false", f"train.storage_path={args.storage}", *args.overrides]

    def config(name: str):
        return load(args.config, [*base, f"train.run_id={name}-{stamp}"])

    reports: list[FaultReport] = []
    clean = config("clean")
    started = time.perf_counter()
    result = train(clean)
    reports.append(FaultReport("none (clean run)", False, True, result["step"], 0, time.perf_counter() - started))
    print(f"clean run: {result['step']} steps in {reports[0].wall_s:.0f} s", flush=True)
    for name, fault, inject in (("worker", "kill -9 a Ray Train worker", kill_a_worker),
                                ("store", "kill the code-store actor", kill_the_store)):
        cfg = config(name)
        reports.append(in_run_fault(cfg, fault, inject, after_step=cfg.train.checkpoint_every, train=train))
        print(reports[-1], flush=True)
    cfg = config("driver")
    command = [sys.executable, "jobs/train.py", "--config", args.config,
               *[item for pair in (("--set", o) for o in [*base, f"train.run_id={cfg.train.run_id}"]) for item in pair]]
    reports.append(driver_fault(command, run_of(cfg), cfg.train.checkpoint_every, cfg.train.log_every))
    print(reports[-1], flush=True)

    import ray

    figures = store_load(args.load_clients, args.load_calls)
    print(f"\nstore load: {figures['clients']} clients x {figures['calls_per_client']} calls (updates and queries) in "
          f"{figures['wall_s']:.0f} s, {figures['calls_per_s']:.0f} calls/s; rows with a lost update: "
          f"{figures['rows_with_lost_update']}; latency p50 {figures['latency_p50_ms']:.1f} ms, p90 "
          f"{figures['latency_p90_ms']:.1f} ms, p99 {figures['latency_p99_ms']:.1f} ms, max {figures['latency_max_ms']:.0f} ms")
    ray.shutdown()
    clean_wall = reports[0].wall_s
    print("\n| fault | injected | survived | final step | steps redone | wall time lost |")
    print("|---|---|---|---|---|---|")
    for report in reports:
        print(f"| {report.fault} | {'yes' if report.injected else '-'} | {'yes' if report.survived else 'NO'} | "
              f"{report.final_step} | {report.steps_redone} | {max(report.wall_s - clean_wall, 0):.0f} s |")
    bad_inputs = measure_bad_inputs()
    faults = [r for r in reports if r.injected]
    print("\n| | tried | survived / refused with a clear error | steps redone / anything lost |\n|---|---|---|---|")
    print(f"| faults injected | {len(faults)} | {sum(r.survived for r in faults)} | "
          f"{sum(r.steps_redone for r in faults)} steps redone |")
    print(f"| bad inputs | {len(bad_inputs)} | {sum(r.refused and r.clear for r in bad_inputs)} | "
          f"{sum(not r.nothing_lost for r in bad_inputs)} lost anything |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "clean_wall_s": clean_wall,
                                          "reports": [r.row() for r in reports], "store_load": figures,
                                          "bad_inputs": [r.row() for r in bad_inputs]}, indent=1))
    print(f"saved {args.out}")
    healthy = all(r.survived for r in reports) and figures["rows_with_lost_update"] == 0
    return 0 if healthy and all_refused(bad_inputs) else 1


def measure_bad_inputs() -> list:
    """Every bad input of tests/bad_inputs.py through `acn-dist`, in a scratch workspace; prints the table."""
    with tempfile.TemporaryDirectory() as workspace:
        reports = run_suite(Path(workspace))
    print("\n" + bad_input_table(reports))
    return reports


def all_refused(reports: list) -> bool:
    return all(r.refused and r.clear and r.nothing_lost for r in reports)


def bad_inputs_alone(out: str) -> int:
    bad_inputs = measure_bad_inputs()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"bad_inputs": [r.row() for r in bad_inputs]}, indent=1))
    print(f"saved {out}")
    return 0 if all_refused(bad_inputs) else 1


if __name__ == "__main__":
    sys.exit(main())
