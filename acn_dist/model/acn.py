"""The ACN and VAE objective: one model, a prior switch.

    L(x) = KL( q(z|x) || p(z|ĉ) ) - E_{z~q(z|x)} log r(x|z)        (acn, ĉ a neighbour's code)
    L(x) = KL( q(z|x) || N(0, I) ) - E_{z~q(z|x)} log r(x|z)        (vae)

q(z|x) = N(c, I): the encoder gives only the mean c, "the code" (with `model.posterior=learned`
it also gives a log sigma per dimension, as a standard VAE's posterior; c stays the code). All
terms are per example, in nats. Training uses a single-sample Monte-Carlo KL, log q(z|x) -
log p(z|ĉ), with the same z fed to the decoder (the VAE uses its analytic KL, 0.5 ||c||^2 for
the unit posterior). No gradient flows into ĉ.

Against posterior collapse the training loss (never the reported code length) can weight the KL
by a warm-up factor and give each latent dimension "free bits": while a dimension's batch-mean
KL is below the allowance, the encoder feels no pull from it (the prior keeps fitting it). An
autoregressive decoder can also be trained with part of its context hidden ("context dropout",
as word dropout for language VAEs), falling to none over a set number of steps, so that z has to
explain what the local statistics cannot while the decoder learns to read it. Or the training
loss can add an auxiliary reconstruction of x from z's map alone, weighted (a PixelCNN decoder
with spatial conditioning): z then has to describe the image whatever the pixel context explains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from acn_dist.config import Config, likelihood
from acn_dist.model.likelihoods import Likelihood, build_likelihood
from acn_dist.model.networks import build_decoder, build_encoder, scale_to_data
from acn_dist.model.priors import DiagonalMixture, Posterior, StandardNormal, build_priors

Prior = DiagonalMixture | StandardNormal
NeighbourRequest = Callable[[torch.Tensor], Callable[[], torch.Tensor | None]]  # code -> the wait for ĉ

__all__ = ["ACN", "Losses", "Posterior", "build_model", "context_dropout_rate", "kl_weight"]


@dataclass
class Losses:
    """Per-example terms [B] in nats. `total` = kl + reconstruction (the code length of x)."""

    total: torch.Tensor
    kl: torch.Tensor
    reconstruction: torch.Tensor
    prior_fit: torch.Tensor  # -log p(z) of the unconditional prior on detached z (trains p(z) only)
    kl_per_dimension: torch.Tensor  # [B, D]: the KL's terms, summed into `kl`
    kl_prior_side: torch.Tensor  # [B, D]: the same with code and z detached (gradient to the prior only)
    auxiliary: torch.Tensor | None = None  # [B]: -log r_aux(x|z) from z's map alone (training only; not in `total`)


def kl_weight(step: int, warmup_steps: int) -> float:
    """The KL's weight in the training loss at `step`: rising linearly from 0 to 1 over
    `warmup_steps` (1 throughout when 0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def context_dropout_rate(step: int, rate: float, steps: int) -> float:
    """The share of decoder context hidden at `step`: `rate` falling linearly to 0 over `steps`
    (`rate` throughout when `steps` is 0)."""
    return rate if steps <= 0 else rate * max(0.0, 1.0 - step / steps)


class ACN(nn.Module):
    """Encoder, decoder, the prior given a neighbour code and the prior from scratch.

    For the ACN the prior is the conditional prior network p(z|ĉ) and the prior from scratch a MoG
    p(z) fitted to the codes; for the VAE both are N(0, I), which ignores ĉ. Nothing below asks
    which objective it is: the priors answer for themselves.
    """

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        model, prior = config.model, config.prior
        self.objective = model.objective  # a name for reports
        self.likelihood: Likelihood = build_likelihood(likelihood(config), image_shape[0], model.logistic_components)
        self.image_shape = image_shape
        self.code_size = model.code_size
        self.learned_scale = model.posterior == "learned"  # the encoder's second half: log sigma
        self.encoder = build_encoder(model.encoder, image_shape, model.code_size * (2 if self.learned_scale else 1),
                                     model.hidden, model.channels)
        self.decoder = build_decoder(model.decoder, image_shape, model.code_size, self.likelihood.parameters,
                                     model.hidden, model.channels, model.pixelcnn_channels,
                                     model.pixelcnn_layers, model.pixelcnn_conditioning,
                                     pixelcnn_auxiliary=model.pixelcnn_auxiliary > 0)
        self.auxiliary_weight = model.pixelcnn_auxiliary
        self.prior, self.unconditional_prior = build_priors(model.objective, model.code_size, prior.hidden,
                                                            prior.layers, prior.components, prior.min_scale)

    @property
    def conditional(self) -> bool:
        """Whether the prior is conditioned on a neighbour's code (the ACN) or not (the VAE)."""
        return self.prior.conditional

    @torch.no_grad()
    def initialise_codes(self, x: torch.Tensor, code_std: float) -> None:
        """Scale the encoder on the batch `x` so that its codes spread with `code_std` per
        dimension, centred (a fresh model only: `networks.scale_to_data`); a learnt sigma starts at 1."""
        scale_to_data(self.encoder, x, code_std)
        if self.learned_scale:
            last = [m for m in self.encoder.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
            last.weight[self.code_size:].zero_()
            if last.bias is not None:
                last.bias[self.code_size:].zero_()

    def posterior(self, x: torch.Tensor) -> Posterior:
        """x [B, C, H, W] -> q(z|x): its mean, the code c [B, D], and (learnt sigma) its log sigma."""
        out = self.encoder(x)
        if self.learned_scale:
            code, log_scale = out.split(self.code_size, dim=-1)
            return Posterior(code, log_scale)
        return Posterior(out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> code c [B, D], the mean of q(z|x)."""
        return self.posterior(x).code

    def forward(self, x: torch.Tensor, ask_neighbour_codes: NeighbourRequest | None = None,
                context_dropout: float = 0.0) -> tuple[torch.Tensor, Losses]:
        """Encode x, ask for ĉ with `ask_neighbour_codes(code)` (which writes the code table and
        searches it, and returns the wait for ĉ: None for the VAE), then the objective:
        `(code [B, D], Losses)`. The decoder runs before the wait, while a remote store searches.
        One call, so that DDP sees the whole computation in one forward pass. `context_dropout`
        hides that share of an autoregressive decoder's context pixels (a training option)."""
        posterior = self.posterior(x)
        code = posterior.code
        receive = ask_neighbour_codes(code.detach()) if ask_neighbour_codes is not None else (lambda: None)
        return code, self._losses(x, posterior, receive, context_dropout=context_dropout)

    def prior_given(self, neighbour_code: torch.Tensor | None) -> Prior:
        return self.prior(neighbour_code.detach() if neighbour_code is not None else None)  # no gradient into ĉ

    def losses(self, x: torch.Tensor, posterior: Posterior, neighbour_code: torch.Tensor | None,
               generator: torch.Generator | None = None) -> Losses:
        """The objective for a batch whose posterior is already computed (Algorithm 1, step 4)."""
        return self._losses(x, posterior, lambda: neighbour_code, generator)

    def _losses(self, x: torch.Tensor, posterior: Posterior,
                receive_neighbour_code: Callable[[], torch.Tensor | None],
                generator: torch.Generator | None = None, context_dropout: float = 0.0) -> Losses:
        """`losses`, with ĉ waited for only once z is decoded."""
        z = posterior.sample(generator)
        auxiliary = None
        if self.auxiliary_weight > 0 and self.training:
            parameters, auxiliary_parameters = self.decoder.decode(z, x, context_dropout)
            auxiliary = self.likelihood.nats(auxiliary_parameters, x)
        else:
            parameters = self.decoder(z, x, context_dropout)
        reconstruction = self.likelihood.nats(parameters, x)
        prior = self.prior_given(receive_neighbour_code())
        kl_per_dimension = prior.kl_per_dimension(posterior, z)
        kl = kl_per_dimension.sum(dim=-1)
        prior_fit = -self.unconditional_prior(len(z)).log_prob(z.detach())
        return Losses(total=kl + reconstruction, kl=kl, reconstruction=reconstruction, prior_fit=prior_fit,
                      kl_per_dimension=kl_per_dimension,
                      kl_prior_side=prior.kl_per_dimension(posterior.detach(), z.detach()), auxiliary=auxiliary)

    def training_loss(self, losses: Losses, kl_weight: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
        """Scalar to minimise: mean reconstruction + `kl_weight` x the mean KL (each dimension's
        batch mean counted at least `free_bits` nats as far as the encoder is concerned) + the
        unconditional prior's own fit (+ the weighted auxiliary reconstruction, when the model has
        one). With the defaults (1, 0, no auxiliary) it is the mean code length."""
        kl = losses.kl_per_dimension.mean(dim=0)  # [D]
        if free_bits > 0:
            below = kl.detach() < free_bits  # these dimensions pull only on the prior
            kl = torch.where(below, losses.kl_prior_side.mean(dim=0), kl)
        loss = kl_weight * kl.sum() + losses.reconstruction.mean() + losses.prior_fit.mean()
        if losses.auxiliary is not None:
            loss = loss + self.auxiliary_weight * losses.auxiliary.mean()
        return loss

    @torch.no_grad()
    def kl_estimate(self, posterior: Posterior, neighbour_code: torch.Tensor | None, samples: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """S-sample Monte-Carlo KL(q(z|x) || prior) per example, nats [B] (analytic for the VAE)."""
        return self.prior_given(neighbour_code).kl_estimate(posterior, samples, generator)

    @torch.no_grad()
    def kl_from_scratch(self, posterior: Posterior, samples: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """KL to the prior from scratch (the first datum of an ordering): [B] nats."""
        return self.unconditional_prior(len(posterior)).kl_estimate(posterior, samples, generator)

    @torch.no_grad()
    def daydream_latent(self, posterior: Posterior, generator: torch.Generator | None = None) -> torch.Tensor:
        """z for one daydream step from the current datum's q(z|x), code c: z ~ p(z|c). The VAE's
        prior ignores c, so its chain draws z ~ q(z|x) instead."""
        if self.conditional:
            return self.prior(posterior.code).sample(generator)
        return posterior.sample(generator)


def build_model(config: Config, image_shape: tuple[int, int, int], seed: int | None = None) -> ACN:
    """The model a config describes, for images [C, H, W]; seeded by `seed` (default train.seed)."""
    torch.manual_seed(config.train.seed if seed is None else seed)
    return ACN(config, image_shape)

