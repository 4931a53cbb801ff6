"""What users do with a trained ACN: runs and the latest-run rule, export to Parquet, neighbours,
samples, readable figures, help and refusals of the `acn-dist` commands."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from acn_dist.cli import COMMANDS, main
from acn_dist.config import Config, load
from acn_dist.data.reader import ShardLoader
from acn_dist.errors import RunError
from acn_dist.evaluate.figures import grid, labelled_grid, labelled_size, save_grid, scale_for
from acn_dist.evaluate.run import encode_all, report, split_tensors
from acn_dist.train.driver import train
from acn_dist.use.export import export_codes
from acn_dist.use.neighbours import find_neighbours
from acn_dist.use.runs import choose_checkpoint, list_runs, runs_table
from acn_dist.use.sample import model_title, sample
from acn_dist.use.summary import results
from acn_dist.use.trained import open_run, parse_query

DIGITS = "jobs/configs/sklearn_digits.yaml"


def settings(data_root: Path, runs: Path, *overrides: str) -> Config:
    return load(DIGITS, [f"data.root={data_root}", f"train.storage_path={runs}", "tracking.enabled=false",
                         "data.loader_workers=0", *overrides])


@pytest.fixture(scope="module")
def runs(sklearn_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs ("older", 1 epoch; "newer", 2 epochs) and a stopped copy of "newer"."""
    folder = tmp_path_factory.mktemp("runs")
    for run_id, epochs in (("older", 1), ("newer", 2)):
        train(settings(sklearn_digits.parent, folder, f"train.run_id={run_id}", f"train.epochs={epochs}"))
    shutil.copytree(folder / "newer", folder / "stopped")
    (folder / "stopped" / "final_checkpoint.txt").unlink()  # as if training stopped part-way
    return folder


def checkpoint_time(run: Path, when: float) -> None:
    for meta in (run / "checkpoints").glob("step-*/meta.json"):
        os.utime(meta, (when, when))


def test_latest_run_rule_picks_the_newest_finished_run(runs: Path, sklearn_digits: Path) -> None:
    config = settings(sklearn_digits.parent, runs)
    checkpoint_time(runs / "older", 2_000_000_000)  # "older" now holds the newest finished checkpoint
    checkpoint_time(runs / "newer", 1_900_000_000)
    checkpoint_time(runs / "stopped", 2_100_000_000)  # newest of all, but not finished
    infos = {info.run_id: info for info in list_runs(runs)}
    assert {k: v.status for k, v in infos.items()} == {"older": "finished", "newer": "finished", "stopped": "stopped"}
    assert infos["older"].step == 23 and infos["newer"].step == 46  # ceil(1,437 train data / 64) per epoch
    assert [info.run_id for info in list_runs(runs)] == ["stopped", "older", "newer"]
    chosen = choose_checkpoint(config)
    assert chosen.run_id == "older" and chosen.checkpoint == runs / "older" / "checkpoints" / "step-000000023"
    assert "latest finished run" in chosen.line()
    checkpoint_time(runs / "newer", 2_050_000_000)
    assert choose_checkpoint(config).run_id == "newer"
    assert choose_checkpoint(config, run_id="stopped").checkpoint.name == "step-000000046"  # named: used anyway
    table = runs_table(list_runs(runs))
    assert table.splitlines()[2].split()[:6] == ["stopped", "sklearn-digits", "acn", "deconv", "46", "stopped"]
    with pytest.raises(RunError, match="no run 'nope'.*runs there: stopped, newer, older"):
        choose_checkpoint(config, run_id="nope")
    with pytest.raises(RunError, match="no finished run"):
        choose_checkpoint(settings(sklearn_digits.parent, runs / "empty"))


def test_export_reads_back_equal_to_the_snapshot(runs: Path, sklearn_digits: Path, tmp_path: Path) -> None:
    config = settings(sklearn_digits.parent, runs)
    run = open_run(choose_checkpoint(config, run_id="newer"), config)
    summary = export_codes(run, tmp_path / "codes.parquet", row_group_size=256)
    parquet = pq.ParquetFile(summary.path)
    assert parquet.num_row_groups == summary.row_groups == math.ceil(1797 / 256)
    assert parquet.metadata.row_group(0).num_rows == 256
    table = parquet.read()
    metadata = table.schema.metadata
    assert metadata[b"acn_dist.run_id"] == b"newer" and metadata[b"acn_dist.step"] == b"46"
    code_type = table.schema.field("code").type
    assert pa.types.is_fixed_size_list(code_type) and code_type.list_size == 16 and code_type.value_type == pa.float32()
    assert pa.types.is_dictionary(table.schema.field("split").type) and table.schema.field("id").type == pa.int64()
    assert table.num_rows == summary.rows == 1797
    ids = table.column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1797))
    splits = table.column("split").to_pylist()
    assert splits[:1437] == ["train"] * 1437 and splits[1437:] == ["test"] * 360
    codes = np.stack(table.column("code").to_numpy(zero_copy_only=False))
    snapshot = np.load(run.chosen.checkpoint / "codes" / "table.npy")
    np.testing.assert_array_equal(codes[:1437], snapshot)  # the store's table, bit for bit
    _, test_x, test_labels, _ = split_tensors(run.config, "test")
    np.testing.assert_allclose(codes[1437:], encode_all(run.acn, test_x, 500), atol=1e-6)
    _, _, train_labels = ShardLoader(sklearn_digits, "train", batch_size=1).arrays()
    np.testing.assert_array_equal(table.column("label").to_numpy(), np.concatenate([train_labels, test_labels]))
    frame = __import__("pandas").read_parquet(summary.path)
    assert len(frame) == 1797 and len(frame["code"].iloc[0]) == 16 and frame["label"].iloc[5] == train_labels[5]


def planted_copy(runs: Path, tmp_path: Path) -> Path:
    """A private copy of run "newer" whose code table a test may change."""
    target = tmp_path / "runs"
    shutil.copytree(runs / "newer", target / "newer")
    return target


def test_neighbours_of_a_planted_datum_return_it_first(runs: Path, sklearn_digits: Path, tmp_path: Path) -> None:
    storage = planted_copy(runs, tmp_path)
    config = settings(sklearn_digits.parent, storage)
    table_file = next((storage / "newer" / "checkpoints").glob("step-*")) / "codes" / "table.npy"
    table = np.load(table_file)
    table[700] = table[5] + 1e-3  # datum 700 planted right next to datum 5
    run = open_run(choose_checkpoint(config, run_id="newer"), config)
    image_code = run.encode(run.model_input(np.asarray(Image.fromarray(np.full((8, 8), 255, np.uint8)))[None], None))
    table[33] = image_code[0]  # datum 33 planted on an all-white image's code
    np.save(table_file, table)
    found = find_neighbours(run, parse_query("5"), k=4)
    assert found.ids[0] == 700 and found.distances[0] == pytest.approx(4e-3, rel=1e-3)  # sqrt(16) x 1e-3
    assert 5 not in found.ids  # a training datum's own id is excluded, as in training
    brute = np.sqrt(((table - table[5]) ** 2).sum(1))
    brute[5] = np.inf
    np.testing.assert_array_equal(found.ids, np.argsort(brute, kind="stable")[:4])
    np.testing.assert_allclose(found.distances, np.sort(brute)[:4], rtol=1e-4)
    _, _, labels = ShardLoader(sklearn_digits, "train", batch_size=1).arrays()
    np.testing.assert_array_equal(found.labels, labels[found.ids])
    white = tmp_path / "white.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(white)
    from_file = find_neighbours(run, parse_query(str(white)), k=3)  # excludes no id
    assert from_file.ids[0] == 33 and from_file.distances[0] < 1e-3 and from_file.query_label == -1


def test_figures_are_pngs_of_the_expected_size(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((3, 5, 1, 8, 8)).astype(np.float32)
    enlarged = grid(images, scale=4)
    assert enlarged.shape == (3 * 33 + 1, 5 * 33 + 1, 3)
    np.testing.assert_array_equal(enlarged[1:5, 1:5, 0], np.full((4, 4), images[0, 0, 0, 0, 0]))  # nearest neighbour
    assert matplotlib.image.imread(save_grid(images, tmp_path / "g.png", scale=4)).shape[:2] == (100, 166)
    rows, columns = ["row one", "row two", "row three"], [f"step {i}" for i in range(5)]
    path = labelled_grid(images, tmp_path / "l.png", "a title", rows, columns)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = labelled_size(3, 5, 8, 8, scale_for(8), "a title", rows, columns)
    assert matplotlib.image.imread(path).shape[:2] == expected
    assert expected[0] > 3 * 8 * scale_for(8) and expected[1] > 5 * 8 * scale_for(8)  # labels add margins


def test_sample_writes_prior_samples_and_daydreams(runs: Path, sklearn_digits: Path, tmp_path: Path) -> None:
    config = settings(sklearn_digits.parent, runs)
    run = open_run(choose_checkpoint(config, run_id="older"), config)
    written = sample(run, tmp_path / "out", 16, [parse_query("3"), parse_query("1500")], steps=5, seed=1)
    assert [p.name for p in written] == ["prior_samples.png", "daydream.png"]
    prior = labelled_size(4, 8, 8, 8, scale_for(8), f"{model_title(run)}: samples from the unconditional prior p(z)",
                          ["mean", "sample"] * 2)
    assert matplotlib.image.imread(written[0]).shape[:2] == prior
    chains = np.load(tmp_path / "out" / "daydream.npy")
    assert chains.shape == (2, 6, 1, 8, 8) and set(np.unique(chains[:, 1:])) <= {0.0, 1.0}
    first, _ = run.data([3])
    np.testing.assert_array_equal(chains[0, 0], run.model_input(first, np.asarray([3]))[0].numpy())


def test_report_uses_human_names_and_units() -> None:
    metrics = {"objective": "acn", "decoder": "deconv", "dataset": "fashion-mnist", "checkpoint": "c",
               "train_count": 60000, "test_count": 10000, "input": "binarised", "knn_k": 5,
               "linear_codes": 0.8412, "linear_codes_converged": True, "knn_pixels_binarised": 0.8,
               "test_nats_per_image": 85.214, "test_kl": 21.5, "ordered_jumps": 12.0}
    text = report(metrics)
    assert "| Linear probe accuracy (codes) | 84.1 % |" in text
    assert "| k-NN accuracy (k=5) (binarised pixels) | 80.0 % |" in text
    assert "| Test nats/image (KL + reconstruction) | 85.21 |" in text
    assert "| Test KL (nats/image) | 21.50 |" in text and "| Jumps in the ordering (count) | 12 |" in text
    assert "linear_codes" not in text
    metrics.update(linear_pixels_binarised=0.79, linear_pixels_binarised_converged=False, knn_codes=0.85)
    table = results(metrics, {"mean_samples_per_s": 1234.4}).splitlines()
    assert re.split(r"\s{2,}", table[2]) == ["test accuracy", "codes", "binarised pixels"]
    assert table[4].split() == ["linear", "probe", "84.1", "%", "79.0", "%", "(solver", "did", "not", "converge)"]
    assert table[5].split()[:6] == ["k-NN", "(k=5)", "85.0", "%", "80.0", "%"]
    assert table[-1].endswith("samples/s)  1,234") and "Test KL (nats/image)" in table[-2]

def test_every_subcommand_help_ends_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
        text = capsys.readouterr().out
        example = text[text.rindex("example:"):]
        assert f"acn-dist {name}" in example, name
        assert "--set KEY=VALUE" in text and len(text.split("\n\n")[1]) > 40, name  # a description


def refusal(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not lines[-1].startswith("using") and all("Traceback" not in line for line in lines)
    return lines[-1]


def test_bad_input_is_refused_in_one_line_and_writes_nothing(runs: Path, sklearn_digits: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--config", DIGITS, "--set", f"train.storage_path={runs}", "--set", f"data.root={sklearn_digits.parent}",
              "--set", "tracking.enabled=false"]
    out = tmp_path / "out"
    assert "'nope'" in refusal(capsys, ["neighbours", "5", "--run", "nope", "--out", str(out / "s.png"), *common])
    assert "'nope'" in refusal(capsys, ["export", "--run", "nope", "--out", str(out / "c.parquet"), *common])
    missing = tmp_path / "missing.png"
    assert str(missing) in refusal(capsys, ["neighbours", str(missing), "--out", str(out / "s.png"), *common])
    assert "id 99999 is outside the dataset's ids 0..1796" in refusal(
        capsys, ["neighbours", "99999", "--out", str(out / "s.png"), *common])
    assert "id 99999" in refusal(capsys, ["sample", "--from", "1", "99999", "--out", str(out), *common])
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(wrong)
    line = refusal(capsys, ["neighbours", str(wrong), "--out", str(out / "s.png"), *common])
    assert str(wrong) in line and "32x32" in line and "--resize" in line
    assert not out.exists()  # nothing written by any refusal
    # the same commands with good input
    assert main(["neighbours", str(wrong), "--resize", "--k", "3", "--out", str(out / "s.png"), *common]) == 0
    captured = capsys.readouterr()
    assert "using run" in captured.err and "3 nearest training data of image" in captured.out
    assert matplotlib.image.imread(out / "s.png").shape[1] > 4 * 8 * scale_for(8, 128)
    assert main(["runs", *common]) == 0
    assert "finished" in capsys.readouterr().out
