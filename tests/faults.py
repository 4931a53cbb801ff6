"""Fault injection against training runs: kill a worker, the code-store actor or the driver
mid-run and check that the run finishes, what it redid and what it cost; and a load test of the
store actor under many concurrent clients.

Test tooling, not part of the package: used by the reliability tests (sklearn-digits) and by
`jobs/chaos.py` (any config)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acn_dist.config import Config
from acn_dist.runs.checkpoints import step_of
from acn_dist.runs.folder import RunFolder


def run_of(config: Config) -> RunFolder:
    return RunFolder.at(config.train.storage_path, config.train.run_id)


@dataclass
class FaultReport:
    fault: str
    injected: bool
    survived: bool
    final_step: int
    steps_redone: int
    wall_s: float
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def steps_redone(history: list[dict[str, float]], log_every: int) -> int:
    """Steps trained twice: at each point where the logged step goes back (a resume), the steps
    between the checkpoint resumed from and the last step logged before the fault."""
    redone = 0
    for before, after in zip(history, history[1:]):
        if after["step"] <= before["step"]:
            resumed_from = after["step"] - log_every
            redone += int(before["step"] - resumed_from)
    return redone


def wait_for_checkpoint(run: RunFolder, at_least: int, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = run.latest_checkpoint()
        if found is not None and step_of(found) >= at_least:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint at step >= {at_least} in {run.path} after {timeout:.0f} s")


def wait_for_progress_past_checkpoint(run: RunFolder, at_least: int, log_every: int, timeout: float = 600) -> int:
    """Wait until a checkpoint at step >= `at_least` exists and training has logged a step past it
    (so the fault lands mid-interval: the steps since the checkpoint are lost). Returns that step."""
    checkpoint_step = step_of(wait_for_checkpoint(run, at_least, timeout))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = run.history()
        if history and history[-1]["step"] >= checkpoint_step + log_every:
            return int(history[-1]["step"])
        time.sleep(0.05)
    raise TimeoutError(f"training did not log past step {checkpoint_step} in {timeout:.0f} s")


def kill_a_worker(run_id: str) -> str:
    """kill -9 one Ray Train worker process of the run (rank order is not known: the first found)."""
    import ray
    from ray.util.state import list_actors

    # The Ray instance this process joined (not "auto": other instances may run on this machine).
    address = ray.get_runtime_context().gcs_address
    workers = list_actors(address=address,
                          filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if not workers:
        raise RuntimeError("no live RayTrainWorker to kill")
    pid = int(workers[0]["pid"])
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to RayTrainWorker pid {pid}"


def store_actor_of(run_id: str):
    """The live code-store actor of a run (its name carries the owner's token: found by prefix)."""
    import ray
    from ray.util.state import list_actors

    from acn_dist.codes.actor import NAMESPACE, actor_name

    address = ray.get_runtime_context().gcs_address
    alive = list_actors(address=address, filters=[("class_name", "=", "CodeStoreActor"), ("state", "=", "ALIVE")])
    names = [a["name"] for a in alive if a["name"].startswith(actor_name(run_id) + "-")]
    if not names:
        raise RuntimeError(f"no live code-store actor of run {run_id!r}")
    return ray.get_actor(names[0], namespace=NAMESPACE), names[0]


def kill_the_store(run_id: str) -> str:
    """Crash the run's code-store actor; Ray restarts it and it restores the newest snapshot."""
    import ray

    actor, name = store_actor_of(run_id)
    ray.kill(actor, no_restart=False)
    return f"ray.kill (restart allowed) of code-store actor {name}"


def in_run_fault(config: Config, fault: str, inject: Callable[[str], str], after_step: int,
                 train: Callable[[Config], dict[str, Any]]) -> FaultReport:
    """Train in this process; a thread injects the fault once a checkpoint at `after_step` exists."""
    run = run_of(config)
    detail: list[str] = []

    def injector() -> None:
        try:
            wait_for_progress_past_checkpoint(run, after_step, config.train.log_every)
            detail.append(inject(config.train.run_id))
        except Exception as error:  # noqa: BLE001  (reported, never raised into the run)
            detail.append(f"injection failed: {error}")

    thread = threading.Thread(target=injector, daemon=True)
    started = time.perf_counter()
    thread.start()
    survived, final = True, 0
    try:
        final = train(config)["step"]
    except Exception as error:  # noqa: BLE001
        survived, detail = False, [*detail, f"run failed: {type(error).__name__}: {error}"]
    thread.join(timeout=5)
    injected = bool(detail) and not detail[0].startswith("injection failed")
    return FaultReport(fault, injected, survived, final, steps_redone(run.history(), config.train.log_every),
                       time.perf_counter() - started, "; ".join(detail))


def driver_fault(command: list[str], run: RunFolder, after_step: int, log_every: int,
                 cwd: str | None = None) -> FaultReport:
    """Start the training command, kill -9 its whole process group (driver and its local Ray) once a
    checkpoint exists, then run the same command again: it must resume and finish."""
    started = time.perf_counter()
    first = subprocess.Popen(command, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_progress_past_checkpoint(run, after_step, log_every)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = run.latest_checkpoint()
    second = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    survived = second.returncode == 0 and "resumed from" in second.stdout + second.stderr
    history = run.history()
    final = int(history[-1]["step"]) if history else 0
    return FaultReport("kill -9 the driver, run the command again", True, survived, final,
                       steps_redone(history, log_every), time.perf_counter() - started,
                       f"killed after {killed_at.name if killed_at else '?'}; rerun exit {second.returncode}"
                       + ("" if survived else f": {second.stderr[-500:]}"))



def store_load(clients: int = 8, calls: int = 10_000, size: int = 60_000, dim: int = 16,
               rows: int = 64) -> dict[str, Any]:
    """`clients` Ray tasks each make `calls` calls on one store actor, alternating updates of their
    own rows and neighbour queries. Checks that the final table equals the last write per row (no
    lost update) and reports latency percentiles. Needs a running Ray (`ray.init`)."""
    import dataclasses

    import numpy as np
    import ray

    from acn_dist.codes.actor import create_store_actor
    from acn_dist.config import CodesConfig

    run_id = f"load-{time.monotonic_ns()}"
    actor = create_store_actor(run_id, "", size, dim, dataclasses.asdict(CodesConfig()))
    try:
        parts = np.array_split(np.random.default_rng(0).permutation(size), clients)
        started = time.perf_counter()
        client = ray.remote(num_cpus=0)(load_client)
        results = ray.get([client.remote(run_id, part, calls, rows, seed) for seed, part in enumerate(parts)])
        wall = time.perf_counter() - started
        table = ray.get(actor.table.remote())
        lost = sum(int(np.any(table[ids] != codes, axis=1).sum()) for ids, codes, _ in results)
        latencies = np.concatenate([lat for _, _, lat in results]) * 1000
        return {"clients": clients, "calls_per_client": calls, "total_calls": clients * calls, "wall_s": wall,
                "calls_per_s": clients * calls / wall, "rows_with_lost_update": lost,
                **{f"latency_p{q}_ms": float(np.percentile(latencies, q)) for q in (50, 90, 99)},
                "latency_max_ms": float(latencies.max())}
    finally:
        ray.kill(actor, no_restart=True)


def load_client(run_id: str, ids: Any, calls: int, rows: int, seed: int) -> tuple[Any, Any, Any]:
    """One client of `store_load`: returns (rows it wrote, their last codes, call latencies in s)."""
    import numpy as np
    import ray

    from acn_dist.codes.actor import get_store_actor

    actor = get_store_actor(run_id)
    rng = np.random.default_rng(seed)
    written = np.zeros(len(ids), dtype=bool)
    latest = np.zeros((len(ids), ray.get(actor.stats.remote())["dim"]), np.float32)
    latencies = np.empty(calls)
    for call in range(calls):
        start = time.perf_counter()
        if call % 2 == 0:  # update some of this client's rows
            pick = rng.choice(len(ids), min(rows, len(ids)), replace=False)
            codes = rng.standard_normal((len(pick), latest.shape[1])).astype(np.float32)
            ray.get(actor.update.remote(ids[pick], codes, call))
            latest[pick], written[pick] = codes, True
        else:
            ray.get(actor.neighbours.remote(ids[rng.choice(len(ids), min(rows, len(ids)), replace=False)]))
        latencies[call] = time.perf_counter() - start
    return ids[written], latest[written], latencies

