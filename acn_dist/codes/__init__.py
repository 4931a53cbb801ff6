"""The code store: every training datum's latest code, and K-nearest-neighbour lookups."""

from acn_dist.codes.store import CodeStore, Neighbours, StoreError

__all__ = ["CodeStore", "Neighbours", "StoreError"]
