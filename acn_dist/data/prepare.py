"""`acn-dist prepare`: write a dataset's shards and print a summary of its manifest."""

from __future__ import annotations

from pathlib import Path

from acn_dist.config import DataConfig
from acn_dist.data.shards import prepare, read_manifest


def summarise(folder: str | Path) -> str:
    manifest = read_manifest(folder)
    lines = [f"dataset {manifest['dataset']} at {folder}",
             f"  source: {manifest['source']['kind']}" + (" (synthetic)" if manifest.get("synthetic") else ""),
             f"  images: {tuple(manifest['image_shape'])} {manifest['dtype']}, "
             f"{manifest['num_classes']} classes"]
    for split, info in manifest["splits"].items():
        lines.append(
            f"  {split}: {info['count']} samples, ids {info['id_start']}..{info['id_stop'] - 1}, "
            f"{len(info['shards'])} shards"
        )
    return "\n".join(lines)


def prepare_and_summarise(config: DataConfig, rebuild: bool = False) -> str:
    """Prepare (checking every shard's checksum when the dataset exists) or, with `rebuild`, write
    the dataset again from its source; a summary of its manifest."""
    return summarise(prepare(config, verify=True, rebuild=rebuild))
