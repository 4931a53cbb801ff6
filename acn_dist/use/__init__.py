"""What users do with a trained ACN: list runs, pick one (the latest finished one by default), export
every datum's code to Parquet, look up a datum's nearest training data, draw samples and daydream
chains. A layer above `evaluate` and `codes`; `acn_dist.cli` only wires these to subcommands."""
