"""`acn-dist export`: the code of every datum of a run, train and test, as one Parquet file.

Columns: `id` int64 (the datum's global id), `split` dictionary<string> ("train"/"test"),
`label` int64 (null when the dataset has none), `code` fixed_size_list<float32>[code_size]. The
file's schema metadata holds the run id, the checkpoint step, the dataset, the code size and
where the train codes came from. Train codes are the checkpoint's code-table snapshot (what the
neighbour search saw at that step; encoded by the model for the VAE, which keeps no table); test
codes are encoded by the model, as `acn-dist evaluate` does.

The file is written shard by shard in row groups of `row_group_size`, so memory stays bounded by
one shard plus one row group whatever the dataset's size, and it appears only when complete.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acn_dist.codes.store import load_array
from acn_dist.data.reader import read_shard, split_shards
from acn_dist.errors import EvaluationError
from acn_dist.runs.storage import AnyPath, location, output_folder, scratch_name
from acn_dist.use.trained import SPLITS, TrainedRun, output_path

ROW_GROUP_SIZE = 65_536


def schema(code_size: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema([("id", pa.int64()), ("split", pa.dictionary(pa.int8(), pa.string())),
                      ("label", pa.int64()), ("code", pa.list_(pa.float32(), code_size))],
                     metadata={key.encode(): value.encode() for key, value in metadata.items()})


def record_batch(ids: np.ndarray, split: str, labels: np.ndarray, codes: np.ndarray, layout: pa.Schema
                 ) -> pa.RecordBatch:
    split_column = pa.DictionaryArray.from_arrays(pa.array(np.full(len(ids), SPLITS.index(split), np.int8)),
                                                  pa.array(list(SPLITS), pa.string()))
    code_column = pa.FixedSizeListArray.from_arrays(pa.array(codes.astype(np.float32).ravel(), pa.float32()),
                                                    codes.shape[1])
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.int64()), split_column,
                                       pa.array(labels, pa.int64(), mask=labels < 0), code_column], schema=layout)


@dataclass(frozen=True)
class ExportSummary:
    path: AnyPath
    rows: int
    row_groups: int
    bytes: int
    train_codes: str  # where the train codes came from


def train_table(run: TrainedRun) -> np.ndarray | None:
    """The checkpoint's code-table snapshot [N, D] (memory-mapped), or None when the run keeps none."""
    table_file = run.trained.checkpoint.codes / "table.npy"
    if not table_file.is_file():
        return None
    # memory-mapped where local; object storage is read whole
    table = np.load(table_file, mmap_mode="r") if isinstance(table_file, Path) else load_array(table_file)
    if table.shape != (run.train_count, run.acn.code_size):
        raise EvaluationError(f"{table_file}: code table of shape {table.shape}, expected "
                              f"({run.train_count}, {run.acn.code_size}); the snapshot is damaged: use another checkpoint")
    return table


def batches(run: TrainedRun, layout: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One record batch per shard, train shards first, each in id order."""
    table = train_table(run)
    shape = tuple(run.manifest["image_shape"])
    labelled = bool(run.manifest.get("labelled", True))
    for split in SPLITS:
        _, shards = split_shards(run.folder, split)
        for shard in sorted(shards, key=lambda s: s.first_id):
            samples = sorted(read_shard(shard, shape, labelled), key=lambda sample: sample[0])
            ids = np.asarray([s[0] for s in samples], dtype=np.int64)
            labels = np.asarray([s[2] for s in samples], dtype=np.int64)
            if split == "train" and table is not None:
                codes = np.asarray(table[ids], dtype=np.float32)
            else:
                codes = run.encode(run.model_input(np.stack([s[1] for s in samples]), ids))
            yield record_batch(ids, split, labels, codes, layout)


def export_codes(run: TrainedRun, out: str | AnyPath, row_group_size: int = ROW_GROUP_SIZE) -> ExportSummary:
    """Write every datum's code to `out` (Parquet, a local path or a URI); returns what was written."""
    if row_group_size < 1:
        raise EvaluationError(f"--row-group-size {row_group_size}: must be at least 1")
    out = location(out)
    with output_folder(out.parent) as folder:  # object storage: written locally, uploaded whole at the end
        summary = write_parquet(run, folder / out.name, row_group_size)
    return dataclasses.replace(summary, path=out)


def write_parquet(run: TrainedRun, out: Path, row_group_size: int) -> ExportSummary:
    """The Parquet file at the local path `out`, appearing only when complete."""
    source = ("code-table snapshot of the checkpoint" if train_table(run) is not None
              else "encoded by the model (the run keeps no code table)")
    layout = schema(run.acn.code_size, {
        "acn_dist.run_id": run.run_id, "acn_dist.step": str(run.step), "acn_dist.checkpoint": str(run.chosen.checkpoint),
        "acn_dist.dataset": run.config.data.dataset, "acn_dist.code_size": str(run.acn.code_size),
        "acn_dist.objective": run.acn.objective, "acn_dist.train_codes": source,
        "acn_dist.test_codes": "encoded by the model (encoder means)"})
    scratch = scratch_name(out)
    rows = 0
    try:
        with pq.ParquetWriter(scratch, layout) as writer:
            pending: list[pa.RecordBatch] = []
            waiting = 0
            for batch in batches(run, layout):
                pending.append(batch)
                waiting += batch.num_rows
                rows += batch.num_rows
                if waiting >= row_group_size:  # write whole row groups, keep the rest
                    table = pa.Table.from_batches(pending, layout)
                    full = waiting - waiting % row_group_size
                    writer.write_table(table.slice(0, full), row_group_size=row_group_size)
                    pending, waiting = table.slice(full).to_batches(), waiting - full
            if waiting:
                writer.write_table(pa.Table.from_batches(pending, layout), row_group_size=row_group_size)
        groups = pq.ParquetFile(scratch).num_row_groups
        os.replace(scratch, out)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return ExportSummary(out, rows, groups, out.stat().st_size, source)


def default_path(run: TrainedRun, given: str = "") -> AnyPath:
    """`given`, else <run>/export/codes-step-<step>.parquet."""
    return output_path(run, given, f"export/codes-step-{run.step:09d}.parquet")


def describe(summary: ExportSummary) -> str:
    return (f"wrote {summary.rows:,} codes ({summary.row_groups} row groups, {summary.bytes / 1e6:.1f} MB) to "
            f"{summary.path}\ntrain codes: {summary.train_codes}\nread it with: "
            f"pandas.read_parquet({str(summary.path)!r}) or ray.data.read_parquet({str(summary.path)!r})")
