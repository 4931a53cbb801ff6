"""`jobs/paper_table.py`'s bookkeeping: rows saved without losing another run's, figures kept
unless replaced, convergence judged from the epoch means."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.job_scripts import load_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_table() -> ModuleType:
    return load_job("paper_table")


def row(model: str, linear: float, dataset: str = "mnist-digits") -> dict:
    return {"dataset": dataset, "model": model, "decoder": "deconv", "input": "binarised", "linear": linear}


def test_saving_rows_replaces_only_theirs_and_keeps_rows_another_run_saved_meanwhile(
        paper_table: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results" / "table.json"
    paper_table.save(out, [row("ACN", 0.90), row("VAE", 0.80)])
    # another run of the script saves a Fashion-MNIST row after this one started
    paper_table.save(out, [row("VAE", 0.70, dataset="fashion-mnist")])
    rows = paper_table.save(out, [row("ACN", 0.93)])
    assert rows == json.loads(out.read_text())
    by_key = {(r["dataset"], r["model"]): r["linear"] for r in rows}
    assert by_key == {("mnist-digits", "ACN"): 0.93, ("mnist-digits", "VAE"): 0.80, ("fashion-mnist", "VAE"): 0.70}


def test_a_run_without_figures_keeps_the_rows_old_figures_and_one_with_figures_replaces_them(
        paper_table: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "figures" / "mnist-digits-deconv-acn"
    folder.mkdir(parents=True)
    (folder / "old.png").write_bytes(b"old")
    paper_table.keep_figures({"linear_codes": 0.9}, folder)
    assert [p.name for p in folder.iterdir()] == ["old.png"]
    fresh = tmp_path / "eval" / "reconstructions.png"
    fresh.parent.mkdir()
    fresh.write_bytes(b"new")
    paper_table.keep_figures({"figures": [str(fresh)]}, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"reconstructions.png": b"new"}


def test_a_loss_is_flat_when_it_moved_under_one_percent_over_the_last_two_epochs(paper_table: ModuleType) -> None:
    assert paper_table.is_flat([120.0, 100.0, 99.5, 99.2]) is True
    assert paper_table.is_flat([120.0, 100.0, 98.0, 97.0]) is False  # 3.1% over the last two epochs
    assert paper_table.is_flat([100.0, 99.0]) is None  # too short to say


def test_the_rendered_table_groups_rows_by_dataset_and_decoder_models_before_baselines(
        paper_table: ModuleType) -> None:
    def full(dataset: str, model: str, decoder: str | None, input_: str) -> dict:
        model_row = decoder is not None
        return {"dataset": dataset, "model": model, "decoder": decoder, "input": input_, "linear": 0.5,
                "knn": 0.5, "nats": 90.0 if model_row else None, "kl": 1.0 if model_row else None,
                "ordered_nats": None, "epochs": 3 if model_row else None, "loss_flat": False}
    saved = [full("fashion-mnist", "pixels", None, "greyscale"), full("mnist-digits", "VAE", "pixelcnn", "binarised"),
             full("fashion-mnist", "ACN", "deconv", "greyscale"), full("mnist-digits", "PCA-16", None, "binarised"),
             full("mnist-digits", "VAE", "deconv", "binarised"), full("mnist-digits", "ACN", "deconv", "binarised"),
             full("mnist-digits", "pixels", None, "greyscale"), full("mnist-digits", "pixels", None, "binarised")]
    body = paper_table.markdown(saved).splitlines()[2:]
    cells = [tuple(c.strip() for c in line.strip("|").split("|")[:4]) for line in body]
    assert cells == [("mnist-digits", "ACN", "deconv", "binarised"), ("mnist-digits", "VAE", "deconv", "binarised"),
                     ("mnist-digits", "VAE", "pixelcnn", "binarised"), ("mnist-digits", "pixels", "", "binarised"),
                     ("mnist-digits", "pixels", "", "greyscale"), ("mnist-digits", "PCA-16", "", "binarised"),
                     ("fashion-mnist", "ACN", "deconv", "greyscale"), ("fashion-mnist", "pixels", "", "greyscale")]


def test_refreshed_losses_come_from_each_models_own_run(paper_table: ModuleType, tmp_path: Path) -> None:
    from acn_dist.runs.folder import RunFolder

    for name, first in (("acn", 100.0), ("standard-vae", 130.0)):
        run = RunFolder.at(str(tmp_path), f"paper-mnist-digits-deconv-{name}")
        run.path.mkdir()
        for step in range(1, 5):  # two epochs of two logged steps
            run.append_history({"step": step, "loss": first - step})
    rows = [{**row("ACN", 0.9), "epochs": 2}, {**row("standard VAE", 0.8), "epochs": 2},
            {**row("pixels", 0.7), "epochs": None},
            {**row("VAE", 0.8), "epochs": 2, "loss_by_epoch": [120.0, 119.0]}]  # its run is not here: kept
    refreshed = paper_table.refresh_losses(rows, str(tmp_path))
    assert [(r["model"], r["loss_by_epoch"]) for r in refreshed] == [("ACN", [98.5, 96.5]),
                                                                      ("standard VAE", [128.5, 126.5])]


def test_a_budget_given_again_by_set_is_named_once_in_the_rows_command(paper_table: ModuleType) -> None:
    budget = ["train.epochs=10", "train.kl_warmup_steps=441"]
    assert paper_table.without_replaced(budget, ["train.epochs=20", "codes.k=20"]) == ["train.kl_warmup_steps=441"]
    assert paper_table.without_replaced(budget, ["train.epochs_x=1"]) == budget  # a key, not a prefix


@pytest.mark.parametrize(("arguments", "culprit"), [
    (["--rows", "mnist-digits/deconv", "--set", "train.epoch=3"], "train.epoch"),
    (["--rows", "mnist-digits/deconv", "--models", "acn-no-auxiliary"], "acn-no-auxiliary"),
])
def test_a_bad_setting_is_refused_before_anything_trains_or_is_written(
        tmp_path: Path, arguments: list[str], culprit: str) -> None:
    out = tmp_path / "results" / "table.json"
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "paper_table.py"), *arguments, "--out", str(out),
                           "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and culprit in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "runs").exists()
