"""Training throughput: VAE vs ACN (prefetch and exact modes), same networks, data, batch, workers.

    python jobs/bench_train.py [--workers 2] [--steps 200] [--datasets fashion-mnist synthetic-1m]
        [--variants vae acn-exact ...] [--table-rows 1000000] [--store-cpus 1]
        [--store-costs bench_results/store_scale.json] [--repeats 3]

For each dataset: samples/s of `vae`, `acn` prefetch and `acn` exact, the ratio ACN/VAE, and the
per-step time breakdown (data, forward, store wait, backward+allreduce) of rank 0, from runs on
a local Ray with the code-store actor. Prints and saves bench_results/train.json. Targets: ratio
>= 0.97 at N = 60k (Fashion-MNIST) and >= 0.9 at N = 1M (synthetic). `acn-prefetch-ivf` uses the
approximate (IVF) search backend, for tables too large for brute force on the store's CPUs.

Prefetch variants set `codes.prefetch_warm_epochs=0`: a benchmark of a few hundred steps stays
inside the first epoch, which the warm start would run in exact mode. The store actor gets
`--store-cpus` CPUs of its own (`codes.num_cpus`, its faiss threads); Ray is started with enough
logical CPUs for the workers and the store even where the machine has fewer cores.

`--table-rows N` sizes the code table to N rows on any dataset (the rows beyond the training
split are the initial N(0, 1) codes, never written: a 1M-row store without preparing 1M images;
within a few hundred steps a real 1M run also writes only a few % of its rows).

With `--store-costs` (the JSON of jobs/bench_store_scale.py --actor-size, measured on the store's
own CPUs) the ratio is also derived for a store that does not share the trainer's CPUs: step time
of the variant minus its measured store wait plus the store's own per-step cost of its mode and
backend (exact: update + search round trip; prefetch: max(0, the store's per-step service time
- the rest of the step)), VAE step time over that.

Runs of a few hundred steps on a 2-core virtual machine vary by 10-25% from one run to the next
(its host takes 5-30% of the CPU time: `cpu_steal_share` of each run, from /proc/stat):
`--repeats R` runs the variants R times, interleaved (vae, acn..., vae, acn...), and reports
each variant's median run (all runs' samples/s are kept in `samples_per_s_runs`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from acn_dist.config import load
from acn_dist.train.driver import train

CONFIGS = {"fashion-mnist": "jobs/configs/fashion_mnist.yaml", "synthetic-1m": "jobs/configs/synthetic_1m.yaml",
           "mnist-digits": "jobs/configs/mnist_digits.yaml"}
PREFETCH = ["model.objective=acn", "codes.mode=prefetch", "codes.prefetch_warm_epochs=0"]
VARIANTS = {"vae": ["model.objective=vae"],
            "acn-prefetch": [*PREFETCH, "codes.backend=cpu"],
            "acn-exact": ["model.objective=acn", "codes.mode=exact", "codes.backend=cpu"],
            "acn-prefetch-ivf": [*PREFETCH, "codes.backend=ivf"],
            "acn-exact-ivf": ["model.objective=acn", "codes.mode=exact", "codes.backend=ivf"]}
BREAKDOWN = ("data_ms", "forward_ms", "store_wait_ms", "backward_ms")


def run(config_path: str, runs: str, root: str, workers: int, steps: int, name: str, extra: list[str],
        store_cpus: int = 1) -> dict:
    config = load(config_path, [*extra, f"train.num_workers={workers}", f"train.max_steps={steps}",
                                f"train.run_id={name}", f"train.storage_path={runs}", f"data.root={root}",
                                f"codes.num_cpus={store_cpus}", f"cluster.num_cpus={workers + store_cpus + 1}",
                                "codes.snapshot_every_s=0", "train.log_every=20", "train.checkpoint_every=100000",
                                "tracking.enabled=false"])
    before = cpu_times()
    history = train(config)["history"][1:]  # the first window holds start-up
    after = cpu_times()
    return {"samples_per_s": float(np.median([row["samples_per_s"] for row in history])),
            **{key: float(np.median([row[key] for row in history])) for key in BREAKDOWN},
            "cpu_steal_share": steal_share(before, after)}


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's `cpu` line; empty where there is none)."""
    stat = Path("/proc/stat")
    return [int(value) for value in stat.read_text().split("\n")[0].split()[1:]] if stat.is_file() else []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """Share of CPU time a virtual machine's host took from it between two readings (steal, the
    8th counter): throughput measured while it is high says more about the host than the code."""
    if len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / max(sum(spent), 1)


def median_run(runs: list[dict]) -> dict:
    """The run of median samples/s (the lower middle one of an even count), with every run's
    samples/s beside it."""
    ordered = sorted(runs, key=lambda row: row["samples_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "samples_per_s_runs": [row["samples_per_s"] for row in runs]}


def pad_table(rows: int) -> None:
    """Size the code table to at least `rows` rows whatever the dataset (see the module's doc)."""
    from acn_dist.train import driver

    preflight = driver.preflight
    driver.preflight = lambda config: max(preflight(config), rows)


def store_cost_ms(costs: list[dict], variant: str) -> float | None:
    """The store's own per-step cost (median of the repeats) for the variant's mode and backend."""
    backend = "ivf" if variant.endswith("-ivf") else "cpu"
    mode = "prefetch" if "prefetch" in variant else "exact"
    for row in costs:
        if row.get("backend") == backend and "skipped" not in row:
            return float(np.median(row[f"{mode}_ms_per_step"]))
    return None


def derived_ratio(rows: dict, variant: str, costs: list[dict], batch: int, workers: int) -> float | None:
    """VAE/ACN step-time ratio with the measured store wait replaced by the store's own cost."""
    cost = store_cost_ms(costs, variant)
    if cost is None:
        return None
    step_ms = {name: 1000 * batch * max(workers, 1) / row["samples_per_s"] for name, row in rows.items()}
    rest = step_ms[variant] - rows[variant]["store_wait_ms"]
    wait = max(0.0, cost - rest) if "prefetch" in variant else cost
    return step_ms["vae"] / (rest + wait)


def prior_network_ms(batch: int = 128, code_size: int = 16, repeats: int = 50) -> float:
    """Forward + backward of the paper's prior network p(z|ĉ) (3 x 512 tanh, 10 components) plus
    the MC KL, one thread (what a 1-CPU Ray Train worker gets): the model's own extra cost over
    the VAE, independent of the code store."""
    import time

    import torch

    from acn_dist.model.priors import ConditionalPrior

    torch.set_num_threads(1)
    prior = ConditionalPrior(code_size)
    neighbour, z = torch.randn(batch, code_size), torch.randn(batch, code_size)
    for _ in range(5):
        prior(neighbour).log_prob(z).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        prior(neighbour).log_prob(z).sum().backward()
    return 1000 * (time.perf_counter() - start) / repeats


def model_step_ms(config_path: str, batch: int = 128, steps: int = 30) -> dict[str, float]:
    """Median forward+backward ms of one training step of the VAE and of the ACN (store waits
    excluded: the ACN's lookup is an in-process store of 8,000 rows, its time not counted), one
    thread, in this process: what each model costs a 1-CPU worker, whatever the store does."""
    import torch

    from acn_dist.codes.client import LocalClient
    from acn_dist.codes.factory import build_store
    from acn_dist.model.acn import build_model
    from acn_dist.train.lookup import ExactLookup, NoLookup
    from acn_dist.train.step import train_step

    torch.set_num_threads(1)
    result = {}
    for objective in ("vae", "acn"):
        config = load(config_path, [f"model.objective={objective}", "codes.backend=cpu"])
        acn = build_model(config, (1, 28, 28))
        optimizer = torch.optim.Adam(acn.parameters(), lr=config.train.lr)
        lookup = (ExactLookup(LocalClient(build_store(config.codes, 8000, config.model.code_size)))
                  if objective == "acn" else NoLookup())
        x = (torch.rand(batch, 1, 28, 28) > 0.5).float()
        times = []
        for step in range(steps):
            ids = torch.randperm(8000)[:batch]
            done = train_step(acn, acn, optimizer, lookup, ids, x, step, config.train)
            times.append(1000 * (done.forward_s + done.backward_s))
        result[objective] = float(np.median(times[5:]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "synthetic-1m"], choices=sorted(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--table-rows", type=int, default=0, help="code-table rows (0 = the training split)")
    parser.add_argument("--store-cpus", type=int, default=1, help="CPUs of the store actor (codes.num_cpus)")
    parser.add_argument("--store-costs", help="JSON of bench_store_scale.py --actor-size (derives the ratio)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the median is reported")
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="bench_results/train.json")
    args = parser.parse_args()
    figures: dict[str, dict] = {}
    if args.table_rows:
        pad_table(args.table_rows)
    costs = json.loads(Path(args.store_costs).read_text())["actor"] if args.store_costs else []
    variants = ["vae", *[v for v in args.variants if v != "vae"]]
    with tempfile.TemporaryDirectory() as runs:
        for dataset in args.datasets:
            runs_of: dict[str, list[dict]] = {variant: [] for variant in variants}
            for repeat in range(args.repeats):
                for variant in variants:
                    runs_of[variant].append(run(CONFIGS[dataset], runs, args.root, args.workers, args.steps,
                                                f"bench-{dataset}-{variant}-{repeat}",
                                                [*VARIANTS[variant], f"train.batch_size={args.batch}"],
                                                args.store_cpus))
            rows = {variant: median_run(done) for variant, done in runs_of.items()}
            for variant in variants[1:]:
                rows[variant]["ratio_to_vae"] = rows[variant]["samples_per_s"] / rows["vae"]["samples_per_s"]
                if costs:
                    rows[variant]["derived_ratio_own_cpus"] = derived_ratio(rows, variant, costs, args.batch,
                                                                            args.workers)
            figures[dataset] = rows
            for variant, row in rows.items():
                ratio = f" ratio to VAE {row['ratio_to_vae']:.3f}" if "ratio_to_vae" in row else ""
                if row.get("derived_ratio_own_cpus") is not None:
                    ratio += f" (store on its own CPUs: {row['derived_ratio_own_cpus']:.3f})"
                print(f"{dataset:>14} {variant:>13}: {row['samples_per_s']:7.0f} samples/s{ratio} | per step: "
                      + " ".join(f"{key[:-3]} {row[key]:6.1f} ms" for key in BREAKDOWN), flush=True)
    prior_ms = prior_network_ms()
    print(f"prior network p(z|ĉ) forward+backward, batch 128, 1 thread: {prior_ms:.1f} ms/step "
          "(the ACN model's own extra work; the store's is the store_wait column)")
    model_ms = model_step_ms(CONFIGS[args.datasets[0]], args.batch)
    print(f"one training step of {args.datasets[0]}'s models, forward+backward, 1 thread, no store wait: "
          f"VAE {model_ms['vae']:.0f} ms, ACN {model_ms['acn']:.0f} ms (ACN / VAE {model_ms['vae'] / model_ms['acn']:.3f}: "
          "the models' own costs, what the ratio would be with no store wait)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"workers": args.workers, "steps": args.steps, "batch": args.batch,
                                          "table_rows": args.table_rows, "store_cpus": args.store_cpus, "repeats": args.repeats,
                                          "store_costs": costs, "results": figures, "prior_network_ms": prior_ms,
                                          "model_step_ms": model_ms},
                                         indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
