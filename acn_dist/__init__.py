"""acn_dist: distributed training of Associative Compression Networks on Ray."""

__version__ = "0.1.0"
