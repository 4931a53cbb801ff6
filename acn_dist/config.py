"""The typed config tree: nested dataclasses, YAML loading, dotted overrides, validation.

One `Config` describes a whole run. YAML files under `jobs/configs/` give partial trees; every
key not given keeps its default. Overrides are `section.key=value` strings (`--set train.lr=3e-4`).
Unknown keys and bad values raise `ConfigError` naming the dotted key, the value and what is
allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acn_dist.errors import ConfigError

__all__ = ["Config", "ConfigError", "from_dict", "likelihood", "load", "with_values"]


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def _at_least(default: float | int, low: float | int) -> Any:
    return field(default=default, metadata={"min": low})


def _in_range(default: float, low: float, high: float) -> Any:
    return field(default=default, metadata={"min": low, "max": high})


# Run ids name folders, Ray actors and MLflow runs: letters, digits, '.', '_' and '-', starting
# with a letter or digit (so never '..', never a path, never a quote in an MLflow filter).
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_ID_RULE = ("1 to 128 characters from letters, digits, '.', '_' and '-', starting with a letter or "
               "digit")


SOURCES = ("idx", "mnist", "mnist-digits", "sklearn-digits", "arrays", "image-folder", "synthetic")

# Keys that existed once: configs saved with them (checkpoints, run folders) still load when they
# hold the only value that remains; any other value is refused with the reason.
RETIRED = {"data.reader": ("webdataset", "data.reader was removed: training reads shards with the WebDataset "
                           "reader only (Ray Data was slower here, see jobs/bench_data.py); drop the key")}


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset comes from, where its shards live, and how batches are read."""

    dataset: str = "mnist-digits"  # name of the shard folder under `root`
    source: str = _choice("mnist-digits", *SOURCES)
    path: str = ""  # source location (IDX folder, .npy/.npz file, image folder); "" = source default
    root: str = "data"  # shard folders live in root/dataset
    shard_size: int = _at_least(2000, 1)  # samples per shard (upper bound)
    shard_multiple: int = _at_least(4, 1)  # shard counts per split are a multiple of this
    synthetic_count: int = _in_range(10000, 1, 10_000_000)
    synthetic_size: int = _at_least(28, 4)  # side of synthetic images
    # > 0: keep this many of the source's training data, a seeded draw stratified by class (smaller
    # counts are subsets of larger ones), for learning curves; the test split stays whole. 0 = all
    train_count: int = _at_least(0, 0)
    binarize: str = _choice("dynamic", "none", "dynamic", "static")  # for training
    # training only: each datum moves by up to this many pixels in each direction, its own offset per
    # epoch (acn_dist/data/augment.py); 0 = the images as they are, the paper's
    augment_shift: int = _at_least(0, 0)
    loader_workers: int = _at_least(1, 0)  # per rank; 0 = read in the training process
    shuffle_buffer: int = _at_least(1000, 0)
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Encoder, decoder and objective."""

    objective: str = _choice("acn", "acn", "vae")
    encoder: str = _choice("conv", "conv", "resnet", "mlp")
    decoder: str = _choice("deconv", "deconv", "pixelcnn")
    code_size: int = _at_least(16, 1)
    hidden: int = _at_least(512, 1)  # width of MLP encoder/decoder layers
    channels: int = _at_least(32, 1)  # base channels of the conv encoder/deconv decoder
    pixelcnn_layers: int = _at_least(6, 1)
    pixelcnn_channels: int = _at_least(64, 1)
    # global: z biases every gate alike; spatial: z -> deconv map of the image's size (PixelVAE)
    pixelcnn_conditioning: str = _choice("global", "global", "spatial")
    # > 0 (spatial conditioning only): the training loss adds this weight x the nats of x under a
    # 1x1 head on z's map alone, with no pixel context, so that z must describe the image whatever
    # the PixelCNN learns from the local statistics (the auxiliary reconstruction loss of hybrid
    # deconv/autoregressive VAEs, Semeniuta et al., 2017); the reported code length never has it
    pixelcnn_auxiliary: float = _at_least(0.0, 0.0)
    likelihood: str = _choice("auto", "auto", "bernoulli", "logistic", "categorical")  # auto: bernoulli iff binarised, else logistic
    logistic_components: int = _at_least(5, 1)  # mixture components of the discretised logistic
    # > 0: a fresh run scales the encoder on its first batch (LSUV) so that the codes start with this
    # spread, as the table's N(0, 1) initial codes (q(z|x) = N(c, I): codes far under 1 are lost in
    # z's noise); 0: PyTorch's own init. mnist-digits, 5 epochs: ACN 104.0 vs 114.4 nats, linear
    # 0.911 vs 0.886; std 3 105.6 / 0.906 (results/ablation.json, study init)
    init_code_std: float = _at_least(1.0, 0.0)
    # q(z|x): the paper's N(c, I) (unit), or a standard VAE's N(c, diag(sigma^2)) with sigma learnt
    posterior: str = _choice("unit", "unit", "learned")


@dataclass(frozen=True)
class PriorConfig:
    """The conditional prior network p(z|ĉ) and the unconditional prior p(z)."""

    hidden: int = _at_least(512, 1)
    layers: int = _at_least(3, 1)
    components: int = _at_least(10, 1)  # mixture components per latent dimension
    min_scale: float = _at_least(1e-3, 1e-6)


@dataclass(frozen=True)
class CodesConfig:
    """The code store: the table of every training datum's latest code and its KNN search."""

    k: int = _at_least(5, 1)
    mode: str = _choice("exact", "exact", "prefetch")  # exact = Algorithm 1: search with the fresh codes
    backend: str = _choice("cpu", "cpu", "gpu", "ivf")
    unique_neighbours: bool = False
    num_cpus: int = _at_least(1, 1)  # CPUs of the store actor (faiss threads)
    num_gpus: int = _at_least(0, 0)  # GPUs of the store actor (gpu backend)
    fp16: bool = False  # fp16 table storage on GPU
    blas_threshold: int = _at_least(20, 0)  # faiss.cvar.distance_compute_blas_threshold
    ivf_lists: int = _at_least(4096, 1)  # recall@5 0.97 (1M) / 0.98 (10M) on trained codes at probe 8: bench_store_scale.py
    ivf_probe: int = _at_least(8, 1)
    ivf_rebuild_every: int = _at_least(0, 0)  # rows written between IVF rebuilds; 0 = the table size (a pass)
    ivf_rebuild_imbalance: float = _at_least(4.0, 0.0)  # rebuild sooner when the lists get this unbalanced; 0 = off
    exclude_batch: bool = False  # also exclude the ids of a datum's own batch from its neighbours
    prefetch_warm_epochs: int = _at_least(1, 0)  # prefetch: epochs searched with fresh codes first
    batch_window_ms: float = _at_least(2.0, 0.0)  # coalescing window for queries
    snapshot_every_s: float = _at_least(20.0, 0.0)  # the store actor's own table snapshots; 0 = only at checkpoints
    max_updates_in_flight: int = _at_least(4, 1)
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    run_id: str = field(default="", metadata={"pattern": RUN_ID_PATTERN, "rule": RUN_ID_RULE})  # "" = generated; the same id resumes
    storage_path: str = "runs"
    num_workers: int = _at_least(0, 0)  # Ray Train workers; 0 = in the driver process
    use_gpu: bool = False
    batch_size: int = _at_least(128, 1)  # per rank
    lr: float = field(default=1e-3, metadata={"min": 0.0, "min_exclusive": True})
    lr_schedule: str = _choice("constant", "constant", "cosine")  # cosine: lr falls to lr_min over the planned steps
    lr_min: float = _at_least(0.0, 0.0)  # where the cosine schedule ends
    epochs: int = _at_least(1, 1)
    max_steps: int = _at_least(0, 0)  # 0 = run `epochs` epochs
    log_every: int = _at_least(20, 1)
    checkpoint_every: int = _at_least(500, 1)  # steps
    keep_checkpoints: int = _at_least(2, 1)
    max_failures: int = _at_least(1, 0)
    nonfinite: str = _choice("stop", "stop", "skip")
    grad_clip: float = _at_least(0.0, 0.0)  # 0 = off
    kl_warmup_steps: int = _at_least(0, 0)  # the KL's weight in the loss rises 0 -> 1 over these steps
    free_bits: float = _at_least(0.0, 0.0)  # nats per latent dimension the encoder may use freely
    context_dropout: float = _in_range(0.0, 0.0, 0.95)  # share of a PixelCNN decoder's context pixels hidden
    context_dropout_steps: int = _at_least(0, 0)  # context_dropout falls linearly to 0 over these steps; 0 = constant
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    kl_samples: int = _at_least(10, 1)
    batch_size: int = _at_least(500, 1)
    probe_max_iter: int = _at_least(5000, 1)  # L-BFGS iterations of the linear probe (convergence is reported)
    knn_k: int = _at_least(5, 1)
    # > 0: the probes (codes and baselines alike) fit on this many labelled training data, a seeded draw
    # stratified by class (smaller draws inside larger ones), as with few labels; 0 = the whole train split
    probe_labels: int = _at_least(0, 0)
    daydream_chains: int = _at_least(8, 1)
    daydream_steps: int = _at_least(12, 1)
    ordered_graph_k: int = _at_least(50, 1)  # neighbours searched per datum when building the ordering
    ordered_limit: int = _at_least(0, 0)  # train data in the ordered bound (0 = all); for slow decoders
    probe: bool = True  # the probes need labels
    baselines: bool = True  # also probe pixels and PCA-16 (the same for every model of a dataset)
    greyscale_baselines: bool = True  # with a binarised input, also the greyscale baselines (for reference)
    seed: int = 0


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (refused under a Ray job)
    experiment: str = "acn_dist"
    artifact_location: str = ""  # "" = the tracking server's artifact store; <cwd>/mlartifacts for a local store
    on_error: str = _choice("warn", "warn", "stop")


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # "" = $RAY_ADDRESS, else a local single-node Ray
    namespace: str = "acn_dist"
    num_cpus: int = _at_least(0, 0)  # local Ray only; 0 = all
    # How Ray Train places its workers on the nodes: PACK fills few nodes, SPREAD one per node where possible
    placement_strategy: str = _choice("PACK", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_code_table(self) -> bool:
        """The ACN conditions its prior on neighbour codes, so it keeps the table of every
        training datum's code; the VAE's prior N(0, I) needs none."""
        return self.model.objective == "acn"

    def flat(self) -> dict[str, Any]:
        """`{"train.lr": 0.001, ...}`: the form logged as MLflow params."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _field_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a YAML or override value to the field's type, or raise naming the key."""
    if isinstance(kind, types.UnionType):  # pragma: no cover - no unions in the tree today
        kind = typing.get_args(kind)[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number; NaN and infinities are refused")
        return number
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {kind}")  # pragma: no cover


def _check_field(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if "pattern" in meta and value and not meta["pattern"].match(value):
        raise ConfigError(f"{key}: {value!r} is not allowed; use {meta['rule']}")
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(meta["choices"])
        raise ConfigError(f"{key}: {value!r} is not one of: {allowed}")
    if "min" in meta:
        low = meta["min"]
        if value < low or (meta.get("min_exclusive") and value == low):
            relation = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{key}: {value!r} is out of range; it must be {relation} {low}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key}: {value!r} is out of range; it must be <= {meta['max']}")


def _section(config: Config, name: str) -> Any:
    if name not in {f.name for f in dataclasses.fields(Config)}:
        sections = ", ".join(f.name for f in dataclasses.fields(Config))
        raise ConfigError(f"unknown config section {name!r}; sections are: {sections}")
    return getattr(config, name)


def _set(config: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{dotted}: keys are written section.key (e.g. train.lr)")
    section = _section(config, parts[0])
    names = {f.name: f for f in dataclasses.fields(section)}
    if dotted in RETIRED and parts[1] not in names:
        kept, reason = RETIRED[dotted]
        if value != kept:
            raise ConfigError(f"{dotted}={value!r}: {reason}")
        return
    if parts[1] not in names:
        raise ConfigError(
            f"unknown config key {dotted!r}; keys of {parts[0]!r} are: {', '.join(names)}"
        )
    spec = names[parts[1]]
    coerced = _coerce(dotted, value, _field_type(type(section), spec.name))
    _check_field(dotted, coerced, spec.metadata)
    object.__setattr__(section, spec.name, coerced)  # only while a new config is being built


def from_dict(tree: typing.Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a config from a (partial) nested mapping; keys not given keep their defaults (or
    those of `base`, which is left as it is)."""
    config = copy.deepcopy(base) if base is not None else Config()
    if not isinstance(tree, typing.Mapping):
        raise ConfigError(f"a config is a mapping of sections, got {type(tree).__name__}")
    for section, values in tree.items():
        _section(config, str(section))
        if values is None:
            continue
        if not isinstance(values, typing.Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
        for key, value in values.items():
            _set(config, f"{section}.{key}", value)
    validate(config)
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """`"train.lr=3e-4"` -> `("train.lr", 0.0003)`; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; configs live in jobs/configs/")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        try:
            config = from_dict(tree)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    for text in overrides:
        key, value = parse_override(text)
        _set(config, key, value)
    validate(config)
    return config


def with_values(config: Config, values: typing.Mapping[str, Any]) -> Config:
    """A new config: `config` with dotted keys set (`{"train.run_id": "x"}`), checked like overrides.
    Configs are frozen once built; this is how a derived value enters one."""
    changed = copy.deepcopy(config)
    for key, value in values.items():
        _set(changed, key, value)
    validate(changed)
    return changed


def validate(config: Config) -> None:
    """Checks that involve more than one key."""
    if config.codes.backend == "gpu" and config.codes.num_gpus < 1:
        raise ConfigError("codes.backend=gpu needs codes.num_gpus >= 1")
    if config.codes.fp16 and config.codes.backend != "gpu":
        raise ConfigError("codes.fp16=true is only supported with codes.backend=gpu")
    if config.model.likelihood == "bernoulli" and config.data.binarize == "none":
        raise ConfigError(
            "model.likelihood=bernoulli needs binarised data; set data.binarize to dynamic or static"
        )
    if config.model.likelihood in ("categorical", "logistic") and config.data.binarize != "none":
        raise ConfigError(f"model.likelihood={config.model.likelihood} models 8-bit pixels; set data.binarize=none")
    if config.train.context_dropout > 0 and config.model.decoder != "pixelcnn":
        raise ConfigError("train.context_dropout hides an autoregressive decoder's context; it needs "
                          "model.decoder=pixelcnn (or set it to 0)")
    if config.model.pixelcnn_auxiliary > 0 and (config.model.decoder != "pixelcnn"
                                                 or config.model.pixelcnn_conditioning != "spatial"):
        raise ConfigError("model.pixelcnn_auxiliary reads x from the PixelCNN's map of z; it needs "
                          "model.decoder=pixelcnn and model.pixelcnn_conditioning=spatial (or set it to 0)")
    if config.train.lr_min >= config.train.lr:
        raise ConfigError(f"train.lr_min={config.train.lr_min} must be below train.lr={config.train.lr}")
    if config.data.source == "synthetic" and config.data.synthetic_count < 2:
        raise ConfigError("data.synthetic_count must be >= 2")
    if config.data.source == "synthetic" and config.data.train_count:
        raise ConfigError("data.train_count draws from a real source's training split; the synthetic source "
                          "makes as many as data.synthetic_count says: set that instead")


def likelihood(config: Config) -> str:
    """The decoder's output distribution: Bernoulli for binarised data, else the discretised
    logistic mixture (or the 256-way categorical, when asked for)."""
    if config.model.likelihood != "auto":
        return config.model.likelihood
    return "logistic" if config.data.binarize == "none" else "bernoulli"
