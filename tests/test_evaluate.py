"""Evaluation: probes, compression bound, figures, daydreams, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acn_dist.config import load
from acn_dist.evaluate import compression, probe
from acn_dist.evaluate.figures import grid, save_grid
from acn_dist.evaluate.run import EvaluationError, evaluate, resolve_checkpoint
from acn_dist.model.acn import ACN
from acn_dist.model.sampling import daydream
from acn_dist.train.driver import train_local


def test_probe_separates_separable_codes_and_is_at_chance_on_random_codes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 3000)
    centres = rng.standard_normal((10, 16)) * 5
    codes = centres[labels] + rng.standard_normal((3000, 16)) * 0.5
    separable = probe.linear_probe(codes[:2000], labels[:2000], codes[2000:], labels[2000:])
    assert separable.accuracy > 0.99 and separable.converged
    assert probe.knn_probe(codes[:2000], labels[:2000], codes[2000:], labels[2000:]) > 0.99
    noise = rng.standard_normal((3000, 16))
    chance = probe.linear_probe(noise[:2000], labels[:2000], noise[2000:], labels[2000:]).accuracy
    assert 0.05 < chance < 0.16


def test_probe_refuses_missing_labels() -> None:
    codes = np.zeros((4, 2))
    with pytest.raises(probe.ProbeError, match="missing labels"):
        probe.linear_probe(codes, np.array([0, 1, -1, 0]), codes, np.array([0, 1, 1, 0]))


def test_greedy_ordering_sends_every_datum_exactly_once() -> None:
    codes = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    order, jumps = compression.greedy_ordering(codes, graph_k=5, seed=3)
    assert sorted(order.tolist()) == list(range(2000))
    assert 0 <= jumps < 2000
    # without jumps, each step goes to one of the current datum's nearest neighbours
    _, graph = __import__("faiss").knn(codes, codes, 6)
    in_graph = np.mean([order[i + 1] in graph[order[i]] for i in range(1999)])
    assert in_graph == pytest.approx(1 - jumps / 1999, abs=1e-9)


def small_acn(objective: str) -> ACN:
    config = load(None, ["model.encoder=mlp", "model.hidden=32", "model.code_size=4", "prior.hidden=32",
                         "prior.components=3", f"model.objective={objective}"])
    torch.manual_seed(0)
    return ACN(config, (1, 8, 8))


@pytest.mark.parametrize("objective", ["acn", "vae"])
def test_compression_bound_is_the_sum_of_its_parts(objective: str) -> None:
    acn = small_acn(objective)
    x = (torch.rand(300, 1, 8, 8) > 0.5).float()
    with torch.no_grad():
        codes = acn.encode(x).numpy()
    figures, order = compression.ordered_bound(acn, x, codes, graph_k=5, samples=4, seed=0, batch_size=64)
    assert sorted(order.tolist()) == list(range(300)) and figures["ordered_count"] == 300
    assert figures["ordered_nats_per_image"] == pytest.approx(figures["ordered_kl"] + figures["ordered_reconstruction"],
                                                              rel=1e-6)
    assert figures["ordered_bits_per_dim"] == pytest.approx(figures["ordered_nats_per_image"] / (64 * np.log(2)))
    test = compression.test_set_compression(acn, codes, x[:50], codes[:50], k=3, samples=4, seed=0)
    assert test["test_nats_per_image"] == pytest.approx(test["test_kl"] + test["test_reconstruction"], rel=1e-6)
    assert 0 < test["test_reconstruction"] < 64 * 2  # nats for 64 binary pixels, untrained


def test_grid_png_has_the_grid_size(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((3, 5, 1, 8, 8)).astype(np.float32)
    assert grid(images).shape == (3 * 9 + 1, 5 * 9 + 1, 3)
    path = save_grid(images, tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (28, 46)


def test_daydream_chain_has_the_requested_length_and_shape() -> None:
    acn = small_acn("acn")
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    chains = daydream(acn, x, steps=6, generator=torch.Generator().manual_seed(0))
    assert chains.shape == (7, 4, 1, 8, 8)
    assert torch.equal(chains[0], x)
    assert set(torch.unique(chains[1:]).tolist()) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def trained_checkpoint(sklearn_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    config = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}", f"train.storage_path={runs}",
                                                       "train.run_id=eval", "train.epochs=5", "data.loader_workers=0"])
    return Path(train_local(config)["checkpoint"])


def test_evaluation_writes_metrics_figures_and_is_deterministic(trained_checkpoint: Path, sklearn_digits: Path,
                                                                tmp_path: Path) -> None:
    settings = load(None, [f"data.root={sklearn_digits.parent}", "eval.daydream_chains=3", "eval.daydream_steps=4",
                           "eval.kl_samples=3", "tracking.enabled=false"])
    first = evaluate(trained_checkpoint, tmp_path / "a", overrides=settings, log=False)
    second = evaluate(trained_checkpoint, tmp_path / "b", overrides=settings, log=False, figures_on=False)
    for key in ("linear_codes", "linear_pixels_binarised", "linear_pca16_binarised", "linear_pixels_greyscale",
                "knn_codes", "knn_pixels_binarised", "test_nats_per_image", "ordered_nats_per_image", "ordered_kl"):
        assert first[key] == second[key], key
    assert first["linear_codes"] > 0.3  # 10 classes: far above chance after a short training
    assert first["linear_pixels_greyscale"] > 0.85
    assert first["input"] == "binarised"
    assert first["ordered_count"] == first["train_count"]
    names = {Path(p).name for p in first["figures"]}
    assert names == {"pca_test_codes.png", "reconstructions.png", "daydream.png", "prior_samples.png",
                     "test_neighbours.png"}
    import matplotlib.image

    from acn_dist.evaluate.figures import scale_for

    cell = 8 * scale_for(8) + 1  # an enlarged image and its gridline
    height, width = matplotlib.image.imread(tmp_path / "a" / "daydream.png").shape[:2]
    assert height > 2 * 3 * cell and width > 4 * cell  # 3 chains (means above samples) x 4 steps, labelled
    height, width = matplotlib.image.imread(tmp_path / "a" / "reconstructions.png").shape[:2]
    assert height > 3 * cell and width > 8 * cell  # data, decoder mean, sample x 8 images, labelled
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["linear_codes"] == first["linear_codes"]
    assert "| Linear probe accuracy (codes) |" in (tmp_path / "a" / "report.md").read_text()


def test_resolve_checkpoint_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="no complete checkpoint"):
        resolve_checkpoint(str(tmp_path), None)
    with pytest.raises(EvaluationError, match="--checkpoint"):
        resolve_checkpoint(None, load(None, []))


def test_pixel_baselines_are_probed_on_the_models_own_input(sklearn_digits: Path) -> None:
    from acn_dist.data.binarize import binarize
    from acn_dist.evaluate.run import probe_table, split_tensors

    binarised = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}"])
    ids, train_x, train_y, train_images = split_tensors(binarised, "train")
    _, test_x, test_y, test_images = split_tensors(binarised, "test")
    # the model's evaluation input: the fixed seeded binarisation of the raw images
    np.testing.assert_array_equal(train_x.numpy()[:, 0], binarize(train_images, ids, "static", binarised.data.seed))
    codes_train, codes_test = train_x.flatten(1).numpy()[:, :5], test_x.flatten(1).numpy()[:, :5]
    rows = probe_table(binarised, codes_train, train_x, train_images, train_y, codes_test, test_x, test_images, test_y)
    assert rows["input"] == "binarised"
    expected = probe.linear_probe(train_x.flatten(1).numpy(), train_y, test_x.flatten(1).numpy(), test_y)
    assert rows["linear_pixels_binarised"] == expected.accuracy
    greyscale = probe.linear_probe(train_images.reshape(len(train_images), -1) / 255, train_y,
                                   test_images.reshape(len(test_images), -1) / 255, test_y)
    assert rows["linear_pixels_greyscale"] == greyscale.accuracy != expected.accuracy
    # a greyscale model is compared with greyscale pixels only
    grey = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}", "data.binarize=none"])
    _, grey_train, _, _ = split_tensors(grey, "train")
    _, grey_test, _, _ = split_tensors(grey, "test")
    rows = probe_table(grey, codes_train, grey_train, train_images, train_y, codes_test, grey_test, test_images, test_y)
    assert rows["input"] == "greyscale" and rows["linear_pixels_greyscale"] == greyscale.accuracy
    assert not any(key.endswith("_binarised") for key in rows)


def test_probe_labels_fit_every_probe_on_the_same_stratified_draw(sklearn_digits: Path) -> None:
    from acn_dist.evaluate.run import probe_table, split_tensors

    config = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}", "eval.probe_labels=300",
                                                        "eval.greyscale_baselines=false"])
    _, train_x, train_y, train_images = split_tensors(config, "train")
    _, test_x, test_y, test_images = split_tensors(config, "test")
    pixels_train, pixels_test = train_x.flatten(1).numpy(), test_x.flatten(1).numpy()
    drawn = probe.labelled_draw(train_y, 300, config.eval.seed)
    assert len(np.unique(drawn)) == 300
    share = np.bincount(train_y, minlength=10) * 300 / len(train_y)
    assert np.all(np.abs(np.bincount(train_y[drawn], minlength=10) - share) < 1)  # each class its share
    assert set(drawn) < set(probe.labelled_draw(train_y, 600, config.eval.seed))  # inside a larger draw
    rows = probe_table(config, pixels_train[:, :5], train_x, train_images, train_y, pixels_test[:, :5], test_x,
                       test_images, test_y)
    assert rows["probe_labels"] == 300
    few = probe.linear_probe(pixels_train[drawn, :5], train_y[drawn], pixels_test[:, :5], test_y).accuracy
    assert rows["linear_codes"] == few
    assert rows["linear_pixels_binarised"] == probe.linear_probe(pixels_train[drawn], train_y[drawn], pixels_test,
                                                                 test_y).accuracy
    assert rows["knn_codes"] == probe.knn_probe(pixels_train[drawn, :5], train_y[drawn], pixels_test[:, :5], test_y)
    everything = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}"])
    whole = probe_table(everything, pixels_train[:, :5], train_x, train_images, train_y, pixels_test[:, :5], test_x,
                        test_images, test_y)
    assert whole["probe_labels"] == len(train_y) and whole["linear_codes"] != few
    too_many = load("jobs/configs/sklearn_digits.yaml", [f"data.root={sklearn_digits.parent}", "eval.probe_labels=5000"])
    with pytest.raises(probe.ProbeError, match=f"eval.probe_labels=5000: the train split has only {len(train_y)}"):
        probe_table(too_many, pixels_train, train_x, train_images, train_y, pixels_test, test_x, test_images, test_y)


def test_probes_by_labels_match_the_evaluation_on_the_same_labels(trained_checkpoint: Path, sklearn_digits: Path,
                                                                  tmp_path: Path) -> None:
    from acn_dist.evaluate.run import probes_by_labels

    settings = load(None, [f"data.root={sklearn_digits.parent}", "eval.kl_samples=2", "eval.ordered_limit=100",
                           "eval.baselines=false", "eval.probe_labels=200", "tracking.enabled=false"])
    full = evaluate(trained_checkpoint, tmp_path / "200", overrides=settings, log=False, figures_on=False)
    by_labels = probes_by_labels(trained_checkpoint, settings, [200, 1000])
    assert set(by_labels) == {200, 1000} and not any(tmp_path.glob("*/*.png"))
    assert by_labels[200]["probe_labels"] == full["probe_labels"] == 200
    for key in ("linear_codes", "linear_codes_converged", "knn_codes"):
        assert by_labels[200][key] == full[key], key
    assert by_labels[1000]["probe_labels"] == 1000 and not any(k.startswith("linear_pixels") for k in by_labels[1000])
