"""The paper-results table on real data: ACN and VAE, deconv and gated PixelCNN decoders, code
size 16, the same budget per dataset; each row trained, then evaluated (linear probe on codes,
k-NN probe, test nats/image, ordered bound).

    python jobs/paper_table.py [--rows mnist-digits/deconv fashion-mnist/deconv mnist-digits/pixelcnn]
                               [--out bench_results/paper_table.json]

Every row's command is printed and saved with its figures, so each row can be reproduced alone:
`acn-dist train --config C --set ...` then `acn-dist evaluate --set train.run_id=R ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acn_dist.config import load  # noqa: E402
from acn_dist.evaluate.run import evaluate, resolve_checkpoint  # noqa: E402
from acn_dist.train.driver import train  # noqa: E402

# Same budget for every row of a dataset (the PixelCNN rows are CPU-bound: ~66 samples/s here).
BUDGETS = {
    "mnist-digits/deconv": ("jobs/configs/mnist_digits.yaml", ["train.epochs=30"], []),
    "fashion-mnist/deconv": ("jobs/configs/fashion_mnist.yaml", ["train.epochs=5", "train.num_workers=2"], []),
    "mnist-digits/pixelcnn": ("jobs/configs/mnist_digits_pixelcnn.yaml", ["train.epochs=3"],
                              ["eval.ordered_limit=2000", "eval.kl_samples=4"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--objectives", nargs="+", default=["acn", "vae"], choices=["acn", "vae"])
    parser.add_argument("--storage", default="runs/paper")
    parser.add_argument("--out", default="bench_results/paper_table.json")
    parser.add_argument("--no-figures", action="store_true",
                        help="metrics only (PixelCNN figures are sampled pixel by pixel: minutes on a CPU)")
    args = parser.parse_args()
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else []
    results = previous  # rows rerun now replace their old entries
    for row in args.rows:
        config_path, budget, eval_settings = BUDGETS[row]
        for objective in args.objectives:
            run_id = f"paper-{row.replace('/', '-')}-{objective}"
            overrides = [*budget, f"model.objective={objective}", f"train.run_id={run_id}",
                         f"train.storage_path={args.storage}", "train.checkpoint_every=100000"]
            command = f"acn-dist train --config {config_path} " + " ".join(f"--set {o}" for o in overrides)
            print(f"\n== {row} {objective}: {command}", flush=True)
            started = time.perf_counter()
            config = load(config_path, overrides)
            train(config)
            trained = time.perf_counter() - started
            settings = load(config_path, [*overrides, *eval_settings])
            metrics = evaluate(resolve_checkpoint(None, settings), overrides=settings, figures_on=not args.no_figures)
            results = [r for r in results if (r["row"], r["objective"]) != (row, objective)]
            results.append({"row": row, "objective": objective, "command": command,
                            "evaluate": f"acn-dist evaluate --config {config_path} --set train.run_id={run_id} "
                                        f"--set train.storage_path={args.storage} "
                                        + " ".join(f"--set {o}" for o in eval_settings),
                            "train_seconds": trained, **{k: v for k, v in metrics.items() if k != "figures"}})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    print("\n| data / decoder | model | probe acc. (codes) | k-NN acc. | PCA-16 | pixels | test nats/image (KL) "
          "| ordered bound nats/image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (list(BUDGETS).index(r["row"]), r["objective"])):
        print(f"| {r['row']} | {r['objective'].upper()} | {r['probe_codes']:.3f} | {r['knn_codes']:.3f} | "
              f"{r['probe_pca16']:.3f} | {r['probe_pixels']:.3f} | {r['test_nats_per_image']:.1f} ({r['test_kl']:.1f}) | "
              f"{r['ordered_nats_per_image']:.1f} |")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
