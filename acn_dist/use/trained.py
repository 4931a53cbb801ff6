"""A chosen run ready to use: its model, config and data, and the inputs a user gives it (datum
ids of either split, image files).

Ids are the shards' global ids: train 0..N-1 (the rows of the code table), test N..N+M-1. An
image file is read as the model's input: greyscale (or RGB for colour models), the model's size
(or resized on request), scaled to [0, 1] and, for a model trained on binarised images, binarised
at 0.5 (a file has no id for the seeded binarisation the data get).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acn_dist.config import Config
from acn_dist.data.binarize import binarize
from acn_dist.data.reader import NO_LABEL, read_shard, split_shards
from acn_dist.data.shards import dataset_folder, read_manifest
from acn_dist.errors import EvaluationError
from acn_dist.evaluate.figures import class_names
from acn_dist.evaluate.loading import Trained, check_dataset, load_trained
from acn_dist.runs.storage import AnyPath, location
from acn_dist.use.runs import Chosen

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Query:
    """One thing the user asked about: a datum id, or an image file."""

    text: str
    datum_id: int | None = None
    image_file: Path | None = None

    def describe(self) -> str:
        return f"id {self.datum_id}" if self.datum_id is not None else f"image {self.image_file}"


def parse_query(text: str) -> Query:
    """"123" -> datum id 123; anything else -> an image file path (checked when read)."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return Query(text, datum_id=int(stripped))
    return Query(text, image_file=Path(text))


@dataclass(frozen=True)
class TrainedRun:
    chosen: Chosen
    trained: Trained
    config: Config  # as trained, with this command's evaluation settings and data location
    manifest: dict[str, Any]

    @property
    def acn(self) -> Any:
        return self.trained.acn

    @property
    def run_id(self) -> str:
        return self.chosen.run_id

    @property
    def step(self) -> int:
        return self.trained.checkpoint.step

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.acn.image_shape)

    @property
    def train_count(self) -> int:
        return int(self.manifest["splits"]["train"]["count"])

    @property
    def id_stop(self) -> int:
        return int(self.manifest["splits"]["test"]["id_stop"])

    @property
    def names(self) -> list[str]:
        return class_names(self.config.data.dataset, max(int(self.manifest.get("num_classes") or 0), 10))

    @property
    def binarised(self) -> bool:
        return self.config.data.binarize != "none"

    @property
    def folder(self) -> Path:
        return dataset_folder(self.config.data)

    def split_of(self, datum_id: int) -> str:
        return "train" if datum_id < self.train_count else "test"

    def check_ids(self, ids: list[int]) -> None:
        for datum_id in ids:
            if not 0 <= datum_id < self.id_stop:
                raise EvaluationError(
                    f"id {datum_id} is outside the dataset's ids 0..{self.id_stop - 1} ({self.config.data.dataset}: "
                    f"train 0..{self.train_count - 1}, test {self.train_count}..{self.id_stop - 1})")

    def data(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [B, ...], labels int64 [B], -1 = none) of datum ids of either split, in
        the order given; reads only the shards that hold them."""
        self.check_ids(ids)
        wanted = set(ids)
        found: dict[int, tuple[np.ndarray, int]] = {}
        for split in SPLITS:
            _, shards = split_shards(self.folder, split)
            for shard in shards:
                if any(shard.first_id <= i < shard.first_id + shard.count for i in wanted):
                    for sample_id, image, label in read_shard(shard, tuple(self.manifest["image_shape"]),
                                                              bool(self.manifest.get("labelled", True))):
                        if sample_id in wanted:
                            found[sample_id] = (image, label)
        return np.stack([found[i][0] for i in ids]), np.asarray([found[i][1] for i in ids], dtype=np.int64)

    def model_input(self, images: np.ndarray, ids: np.ndarray | None) -> torch.Tensor:
        """uint8 images [B, H, W(, C)] -> x [B, C, H, W] as the model saw them at evaluation: the
        fixed seeded binarisation of data (by id); files (`ids` None) binarised at 0.5."""
        if not self.binarised:
            x = images.astype(np.float32) / 255
        elif ids is not None:
            x = binarize(images, ids, "static", self.config.data.seed)
        else:
            x = (images.astype(np.float32) / 255 >= 0.5).astype(np.float32)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
        """Codes (encoder means) [B, D] float32."""
        if len(x) == 0:
            return np.zeros((0, self.acn.code_size), dtype=np.float32)
        return torch.cat([self.acn.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()

    def read_image(self, path: Path, resize: bool = False) -> np.ndarray:
        return read_image_file(path, self.image_shape, resize, self.run_id)

    def query_images(self, queries: list[Query], resize: bool = False
                     ) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """(raw uint8 images, model input x, labels) of datum ids and image files, in order.
        Everything is checked before anything is read: ids in range, files present."""
        self.check_ids([q.datum_id for q in queries if q.datum_id is not None])
        files = [q.image_file for q in queries if q.image_file is not None]
        for path in files:
            if not path.is_file():
                raise EvaluationError(f"image file {path} does not exist; give a datum id or the path of a PNG")
        ids = [q.datum_id for q in queries if q.datum_id is not None]
        data_images, data_labels = self.data(ids) if ids else (None, None)
        raws, xs, labels, next_datum = [], [], [], 0
        for query in queries:
            if query.datum_id is not None:
                raw, label = data_images[next_datum], int(data_labels[next_datum])
                next_datum += 1
                x = self.model_input(raw[None], np.asarray([query.datum_id]))
            else:
                raw, label = self.read_image(query.image_file, resize), NO_LABEL
                x = self.model_input(raw[None], None)
            raws.append(raw)
            xs.append(x)
            labels.append(label)
        return np.stack(raws), torch.cat(xs), np.asarray(labels, dtype=np.int64)


def output_path(run: TrainedRun, given: str, default: str) -> AnyPath:
    """Where a command writes: `given`, else `default` inside the run folder (local or in the bucket)."""
    return location(given) if given else run.chosen.checkpoint.parent.parent / default


def read_image_file(path: Path, shape: tuple[int, int, int], resize: bool, run_id: str = "") -> np.ndarray:
    """A PNG (or any image Pillow reads) as uint8 [H, W] (greyscale models) or [H, W, 3]; refuses a
    missing or unreadable file, and one of another size unless `resize`."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise EvaluationError(f"image file {path} does not exist; give a datum id or the path of a PNG")
    channels, height, width = shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise EvaluationError(f"image file {path} cannot be read as an image ({type(error).__name__}); "
                              "give a PNG") from None
    if image.size != (width, height):
        if not resize:
            raise EvaluationError(
                f"image file {path} is {image.size[0]}x{image.size[1]} pixels; run {run_id!r} was trained on "
                f"{width}x{height} images: resize it, or pass --resize to scale it to {width}x{height}")
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def open_run(chosen: Chosen, settings: Config, data_root: str | None = None) -> TrainedRun:
    """Load the chosen checkpoint with the config it was trained with; its data are found under
    `data_root` when given, else where training read them (else `settings.data.root`). Refuses
    data other than those the model was trained on."""
    trained = load_trained(chosen.checkpoint)
    root = data_root or (trained.config.data.root if Path(trained.config.data.root).is_dir() else settings.data.root)
    config = dataclasses.replace(trained.config, eval=settings.eval, tracking=settings.tracking,
                                 data=dataclasses.replace(trained.config.data, root=root))
    check_dataset(trained, config)
    return TrainedRun(chosen, trained, config, read_manifest(dataset_folder(config.data)))
