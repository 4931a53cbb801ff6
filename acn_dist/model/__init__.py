"""Networks, priors and the ACN/VAE objective."""

from acn_dist.model.acn import ACN, Losses

__all__ = ["ACN", "Losses"]
