"""`jobs/ablation.py`'s studies: every variant is a valid config on the config its study was measured
with, and rerunning a study measured before a default changed runs the setting it was measured with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from acn_dist import config
from tests.job_scripts import load_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation() -> ModuleType:
    return load_job("ablation")


def test_every_variant_loads_on_its_studys_config_and_sets_what_it_names(ablation: ModuleType) -> None:
    assert set(ablation.CONFIGS) == set(ablation.STUDIES)
    for study, variants in ablation.STUDIES.items():
        for variant, overrides in variants.items():
            loaded = config.load(ROOT / ablation.CONFIGS[study], overrides)
            # one value per key, so no variant silently overrides its own setting
            keys = [override.split("=", 1)[0] for override in overrides]
            assert len(keys) == len(set(keys)), (study, variant, overrides)
            for override in overrides:
                key, value = config.parse_override(override)
                section, name = key.split(".")
                assert getattr(getattr(loaded, section), name) == value, (study, variant, override)


def test_studies_measured_before_a_default_changed_name_the_old_setting(ablation: ModuleType) -> None:
    for study, variants in ablation.STUDIES.items():
        auxiliary = {o for overrides in variants.values() for o in overrides if o.startswith("model.pixelcnn_auxiliary=")}
        # only the auxiliary study varies the weight; every study before it ran without; later ones use the config's
        assert auxiliary == ({"model.pixelcnn_auxiliary=0.25", "model.pixelcnn_auxiliary=1", "model.pixelcnn_auxiliary=0"}
                             if study == "auxiliary" else set() if study in ("neighbours", "augment", "data")
                             else {"model.pixelcnn_auxiliary=0"}), study
        if study != "auxiliary":  # every variant names it, or none
            assert len({any(o.startswith("model.pixelcnn_auxiliary=") for o in overrides) for overrides in variants.values()}) == 1
        if study in ("freshness", "input", "collapse", "conditioning", "context"):  # ran before init_code_std
            assert all("model.init_code_std=0" in overrides for overrides in variants.values()), study


def test_a_set_key_replaces_the_variants_own_setting_once(ablation: ModuleType) -> None:
    # the input study ran from PyTorch's init (model.init_code_std=0); --set asks for the unit-spread start
    own = ablation.STUDIES["input"]["greyscale-resnet"]
    assert "model.init_code_std=0" in own
    overrides, settings = ablation.variant_settings("jobs/configs/mnist_digits.yaml", "input", "greyscale-resnet", 30,
                                                    "runs/ablation", ["model.init_code_std=1"])
    assert overrides == [o for o in own if o != "model.init_code_std=0"]  # what the row records trained
    keys = [setting.split("=", 1)[0] for setting in settings]
    assert len(keys) == len(set(keys)), settings  # the command names each key once
    loaded = config.load(ROOT / "jobs/configs/mnist_digits.yaml", settings)
    assert loaded.model.init_code_std == 1 and loaded.data.binarize == "none" and loaded.train.epochs == 30


@pytest.mark.parametrize(("arguments", "culprit"), [(["--set", "train.kl_warmup=132"], "train.kl_warmup"),
                                                   (["--epochs", "0"], "train.epochs"),
                                                   (["--probe-labels", "1000", "0"], "--probe-labels")])
def test_a_bad_setting_is_refused_before_any_variant_trains(tmp_path: Path, arguments: list[str], culprit: str) -> None:
    out = tmp_path / "ablation.json"
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "ablation.py"), "--study", "auxiliary", *arguments,
                           "--out", str(out), "--storage", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and culprit in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_seed_trains_its_own_run_and_the_row_records_it(ablation: ModuleType) -> None:
    overrides, settings = ablation.variant_settings("jobs/configs/mnist_digits.yaml", "augment", "acn-shift-2", 30,
                                                    "runs/ablation", ["train.seed=7", "codes.k=20"], seed=2)
    assert overrides == ablation.STUDIES["augment"]["acn-shift-2"]
    assert [s for s in settings if s.startswith("train.seed=")] == ["train.seed=2"]  # the --seeds seed, once
    assert "train.run_id=ablation-augment-mnist_digits-acn-shift-2-seed2" in settings
    assert config.load(ROOT / "jobs/configs/mnist_digits.yaml", settings).train.seed == 2
    # a --set seed alone names its run too, so that it never resumes the config's seed's run
    _, by_set = ablation.variant_settings("jobs/configs/mnist_digits.yaml", "augment", "acn-shift-2", 30,
                                          "runs/ablation", ["train.seed=7"])
    assert "train.run_id=ablation-augment-mnist_digits-acn-shift-2-seed7" in by_set
    _, unseeded = ablation.variant_settings("jobs/configs/mnist_digits.yaml", "augment", "acn-shift-2", 30,
                                            "runs/ablation", [])
    assert "train.run_id=ablation-augment-mnist_digits-acn-shift-2" in unseeded


def test_seeds_give_one_row_each_and_a_rerun_replaces_its_own(ablation: ModuleType, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ablation.json"
    # rows from before seeds have no "seed" key: they trained with the configs' seed 0
    old = {"study": "augment", "config": "jobs/configs/mnist_digits.yaml", "variant": "acn-shift-2", "epochs": 1,
           "linear": 0.5}
    out.write_text(json.dumps([old]))
    trained: list[tuple[str, int]] = []

    def fake_run(config_path, study, variant, overrides, settings, epochs, probe_labels):  # training stands aside
        seed = config.load(ROOT / config_path, settings).train.seed
        trained.append((variant, seed))
        return {"study": study, "config": config_path, "variant": variant, "epochs": epochs, "seed": seed,
                "linear": 0.9 + seed / 100, "mean_samples_per_s": 300.0}

    monkeypatch.setattr(ablation, "run_variant", fake_run)
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--study", "augment", "--variants", "acn-shift-2", "vae-shift-2",
                                      "--epochs", "1", "--seeds", "0", "3", "--out", str(out)])
    assert ablation.main() == 0
    assert trained == [("acn-shift-2", 0), ("acn-shift-2", 3), ("vae-shift-2", 0), ("vae-shift-2", 3)]
    rows = json.loads(out.read_text())
    assert sorted((r["variant"], r["seed"], r["linear"]) for r in rows) == [
        ("acn-shift-2", 0, 0.9), ("acn-shift-2", 3, 0.93), ("vae-shift-2", 0, 0.9), ("vae-shift-2", 3, 0.93)]


def test_a_rerun_that_trained_nothing_keeps_the_training_measures(ablation: ModuleType) -> None:
    old = {"train_seconds": 700.0, "mean_samples_per_s": 340.0, "same_batch_share": 0.3, "staleness": 15.0,
           "linear": 0.92, "probe_labels": {}}
    # the finished run evaluated again, with the probes on fewer labels added
    rerun = {"train_seconds": 4.0, "mean_samples_per_s": None, "same_batch_share": None, "staleness": None,
             "linear": 0.92, "probe_labels": {"1000": {"linear": 0.9}}}
    kept = ablation.replacing(old, rerun)
    assert kept == {**rerun, "train_seconds": 700.0, "mean_samples_per_s": 340.0, "same_batch_share": 0.3,
                    "staleness": 15.0}
    retrained = {**rerun, "train_seconds": 650.0, "mean_samples_per_s": 360.0}
    assert ablation.replacing(old, retrained) == retrained
    assert ablation.replacing(None, rerun) == rerun
