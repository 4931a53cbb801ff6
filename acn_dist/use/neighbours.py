"""`acn-dist neighbours`: the K nearest training data of a datum or an image, by code.

The search is the training search: a `CodeStore` with the run's configured backend, restored from
the checkpoint's code-table snapshot (for the VAE, which keeps no table, filled with the train
codes encoded now), asked through `CodeStore.nearest`. A training datum's query is its stored code
and excludes its own id, as in training; a test datum's or an image file's query is its code
encoded now and excludes no id (-1).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acn_dist.codes.factory import build_store, visible_gpus
from acn_dist.codes.store import CodeStore
from acn_dist.errors import EvaluationError
from acn_dist.evaluate.figures import label_name, labelled_grid, scale_for
from acn_dist.use.tables import text_table
from acn_dist.use.trained import Query, TrainedRun

NO_ID = -1  # the query id of a code that is not in the table: excludes nothing


def search_store(run: TrainedRun) -> CodeStore:
    """The run's code table behind the backend it was trained with (CPU when it trained on GPUs
    and none is visible here)."""
    codes = run.config.codes
    if codes.backend == "gpu" and not visible_gpus():
        print("note: the run searched on GPU (codes.backend=gpu); no GPU is visible, so this search runs on the CPU",
              file=sys.stderr)
        codes = dataclasses.replace(codes, backend="cpu", fp16=False)
    store = build_store(codes, run.train_count, run.acn.code_size)
    snapshot = run.trained.checkpoint.codes
    if (snapshot / "header.json").is_file():
        store.restore(snapshot)
    else:  # the VAE keeps no table: its train codes, encoded now
        images, _ = run.data(list(range(run.train_count)))
        ids = np.arange(run.train_count)
        store.update(ids, run.encode(run.model_input(images, ids)))
    return store


@dataclass(frozen=True)
class Found:
    """The K nearest training data of one query."""

    query: Query
    query_label: int
    query_image: np.ndarray  # uint8 [H, W(, C)]
    ids: np.ndarray  # int64 [K], nearest first
    distances: np.ndarray  # float32 [K], Euclidean (not squared)
    labels: np.ndarray  # int64 [K]
    images: np.ndarray  # uint8 [K, H, W(, C)]


def find_neighbours(run: TrainedRun, query: Query, k: int | None = None, resize: bool = False) -> Found:
    """K nearest training codes of the query's code (K = the run's codes.k unless given)."""
    k = run.config.codes.k if k is None else k
    if not 1 <= k < run.train_count:
        raise EvaluationError(f"--k {k}: must be in 1..{run.train_count - 1} (the run has {run.train_count} "
                              "training data, the query's own id excluded)")
    raw, x, labels = run.query_images([query], resize)  # checks the id or the file first
    store = search_store(run)
    if query.datum_id is not None and run.split_of(query.datum_id) == "train":
        exclude = np.asarray([query.datum_id])
        code = store.rows(exclude)
    else:
        exclude = np.asarray([NO_ID])
        code = run.encode(x)
    ids, squared = store.nearest(exclude, code, k)
    images, neighbour_labels = run.data(ids[0].tolist())
    return Found(query, int(labels[0]), raw[0], ids[0], np.sqrt(np.maximum(squared[0], 0)).astype(np.float32),
                 neighbour_labels, images)


def neighbours_table(run: TrainedRun, found: Found) -> str:
    """The query, then one line per neighbour: rank, id, label, distance."""
    names = run.names
    what = found.query.describe()
    if found.query.datum_id is not None:
        what += f" ({run.split_of(found.query.datum_id)}, label {label_name(found.query_label, names)})"
    rows = [[rank + 1, int(i), label_name(int(label), names), f"{distance:.3f}"]
            for rank, (i, label, distance) in enumerate(zip(found.ids, found.labels, found.distances))]
    header = f"{len(found.ids)} nearest training data of {what}, by Euclidean distance between codes:"
    return header + "\n" + text_table(["rank", "id", "label", "distance"], rows)


def neighbours_strip(run: TrainedRun, found: Found, path: str | Path) -> Path:
    """The query image and its neighbours in one row, each labelled with id, label and distance."""
    names = run.names
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([found.query_image[None], found.images]).astype(np.float32) / 255
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    query = f"id {found.query.datum_id}" if found.query.datum_id is not None else "image file"
    columns = [f"query\n{query}\n"] + [f"#{rank + 1} id {int(i)}\n{label_name(int(label), names)}\nd = {distance:.2f}"
                                     for rank, (i, label, distance) in enumerate(zip(found.ids, found.labels,
                                                                                     found.distances))]
    return labelled_grid(images[None], path, f"run {run.run_id}: nearest training data of {found.query.describe()}",
                         column_labels=columns, scale=scale_for(images.shape[2], 128))
