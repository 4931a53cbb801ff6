"""Datasets: sources, WebDataset shards with their manifest, readers and binarisation."""

from acn_dist.data.reader import ShardLoader
from acn_dist.data.shards import DataError, prepare, read_manifest

__all__ = ["DataError", "ShardLoader", "prepare", "read_manifest"]
