from pathlib import Path

import pytest

from acn_dist.cli import main
from acn_dist.config import Config, ConfigError, from_dict, load, parse_override

CONFIGS = sorted(Path("jobs/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load(path)
    assert isinstance(config, Config)
    assert config.data.dataset  # every shipped config names its dataset


def test_defaults_are_the_papers_and_ours() -> None:
    config = Config()
    assert (config.codes.k, config.prior.components, config.prior.layers, config.prior.hidden) == (5, 10, 3, 512)
    assert (config.train.lr, config.train.batch_size, config.model.code_size) == (1e-3, 128, 16)
    assert config.model.init_code_std == 1.0  # the spread of the table's N(0, 1) initial codes


def test_overrides_are_typed() -> None:
    config = load("jobs/configs/mnist_digits.yaml",
                  ["train.lr=3e-4", "codes.k=7", "codes.unique_neighbours=true", "model.objective=vae"])
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.codes.k == 7 and config.codes.unique_neighbours is True
    assert config.model.objective == "vae"


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("tracking.uri=") == ("tracking.uri", "")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("trian.lr=1", "unknown config section 'trian'"),
        ("codes.mode=fast", "codes.mode: 'fast' is not one of: exact, prefetch"),
        ("train.batch_size=0", "train.batch_size: 0 is out of range; it must be >= 1"),
        ("model.code_size=0", "model.code_size: 0 is out of range"),
        ("train.lr=0", "train.lr: 0.0 is out of range; it must be > 0"),
        ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
        ("codes.unique_neighbours=maybe", "expected true or false"),
        ("lr=1", "keys are written section.key"),
        ("train.lr", "must look like section.key=value"),
        ("train.context_dropout=1", "train.context_dropout: 1.0 is out of range; it must be <= 0.95"),
        ("train.lr_schedule=linear", "train.lr_schedule: 'linear' is not one of: constant, cosine"),
        ("train.lr_min=0.01", "train.lr_min=0.01 must be below train.lr=0.001"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(None, [override])


def test_cross_key_validation() -> None:
    with pytest.raises(ConfigError, match="codes.backend=gpu needs codes.num_gpus"):
        from_dict({"codes": {"backend": "gpu"}})
    with pytest.raises(ConfigError, match="bernoulli needs binarised data"):
        from_dict({"model": {"likelihood": "bernoulli"}, "data": {"binarize": "none"}})
    with pytest.raises(ConfigError, match="train.context_dropout .* needs model.decoder=pixelcnn"):
        from_dict({"model": {"decoder": "deconv"}, "train": {"context_dropout": 0.5}})
    assert from_dict({"model": {"decoder": "pixelcnn"}, "train": {"context_dropout": 0.5}}).train.context_dropout == 0.5
    for model in ({"decoder": "deconv"}, {"decoder": "pixelcnn", "pixelcnn_conditioning": "global"}):
        with pytest.raises(ConfigError, match="model.pixelcnn_auxiliary .* needs model.decoder=pixelcnn and "
                                              "model.pixelcnn_conditioning=spatial"):
            from_dict({"model": {**model, "pixelcnn_auxiliary": 0.5}})


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown config key 'train.epochz'"):
        load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_flat_has_every_key_once() -> None:
    flat = Config().flat()
    assert flat["train.lr"] == 1e-3 and flat["codes.k"] == 5
    assert len(flat) == sum(len(section) for section in Config().to_dict().values())


def test_cli_prints_resolved_config_and_refuses_bad_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--config", "jobs/configs/sklearn_digits.yaml", "--set", "train.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "dataset: sklearn-digits" in out
    assert main(["config", "--set", "codes.kk=3"]) == 2
    assert "unknown config key 'codes.kk'" in capsys.readouterr().err
