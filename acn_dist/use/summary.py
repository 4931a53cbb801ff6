"""The short results table a finished run ends with (`make demo`): the probes of the codes beside
the pixel baselines on the same input, the test code length and its KL, the run's mean
throughput; then where the figures are and how to see the run in MLflow."""

from __future__ import annotations

from typing import Any

from acn_dist.evaluate.run import FEATURES, measure_name, measure_value
from acn_dist.use.tables import text_table


def probe_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers (features) and rows (linear probe, k-NN) of the probe table: the codes first, then
    the baselines on the model's own input, then (for a binarised model) greyscale for reference."""
    kind = metrics.get("input", "binarised")
    order = ["codes", f"pixels_{kind}", f"pca16_{kind}", "pixels_greyscale", "pca16_greyscale"]
    features = [name for name in dict.fromkeys(order) if f"linear_{name}" in metrics]
    headers = ["test accuracy"] + [FEATURES[name] for name in features]
    rows = [[title] + [measure_value(f"{probe}_{name}", metrics) for name in features]
            for probe, title in (("linear", "linear probe"), ("knn", f"k-NN (k={metrics.get('knn_k', 5)})"))]
    return headers, rows


def results(metrics: dict[str, Any], last_row: dict[str, Any]) -> str:
    """The table; `last_row` is the run's last logged metrics row (its `mean_samples_per_s` is the
    whole session's rate)."""
    lines = [f"Results: {metrics['objective'].upper()} ({metrics['decoder']} decoder) on {metrics['dataset']}, "
             f"{metrics['train_count']:,} training / {metrics['test_count']:,} test images ({metrics.get('input')} input)"]
    if "linear_codes" in metrics:
        headers, rows = probe_rows(metrics)
        lines += ["", text_table(headers, rows)]
    measures = [[measure_name(key), measure_value(key, metrics)]
                for key in ("test_nats_per_image", "test_kl", "test_reconstruction", "ordered_nats_per_image")
                if key in metrics]
    if isinstance(last_row.get("mean_samples_per_s"), (int, float)):
        measures.append(["Training throughput, mean over the run (samples/s)", f"{last_row['mean_samples_per_s']:,.0f}"])
    lines += ["", text_table(["measure", "value"], measures)]
    return "\n".join(lines)


def where_to_look(figures: list[str], report: str | None, tracking_uri: str | None, mlflow_run_id: str | None) -> str:
    lines = ["", "Figures:", *[f"  {path}" for path in figures]]
    if report:
        lines.append(f"Report:  {report}")
    if tracking_uri and mlflow_run_id:
        lines += [f"MLflow run {mlflow_run_id} (figures under its artifacts, eval/); see it with:",
                  f"  .venv/bin/mlflow ui --backend-store-uri {tracking_uri}    then open http://127.0.0.1:5000"]
    return "\n".join(lines)
