"""The ACN model and objective: estimators, densities, causality, shapes, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from acn_dist.config import Config, from_dict, with_values
from acn_dist.model.acn import ACN
from acn_dist.model.likelihoods import Categorical
from acn_dist.model.networks import GatedPixelCNN
from acn_dist.model.priors import (
    ConditionalPrior,
    DiagonalMixture,
    Posterior,
    StandardNormal,
    UnconditionalPrior,
)


def small_config(**model: object) -> Config:
    return from_dict({"model": {"code_size": 4, "hidden": 32, "channels": 4, "pixelcnn_channels": 8,
                                "pixelcnn_layers": 3, **model}, "prior": {"hidden": 32, "components": 3}})


def test_single_sample_kl_matches_analytic_kl_for_a_gaussian_prior() -> None:
    torch.manual_seed(0)
    code = torch.randn(6, 5) * 2
    samples = 40_000
    z = code + torch.randn(samples, *code.shape)
    estimates = Posterior(code).log_prob(z) - StandardNormal().log_prob(z)  # [S, B]
    analytic = 0.5 * (code**2).sum(-1)
    standard_error = estimates.std(0) / math.sqrt(samples)
    assert torch.all((estimates.mean(0) - analytic).abs() < 5 * standard_error + 1e-3)


def test_acn_kl_estimate_matches_analytic_kl_for_a_one_component_prior() -> None:
    """With M = 1, p(z|ĉ) is Gaussian and KL(N(c, I) || N(m, s^2)) has a closed form."""
    torch.manual_seed(0)
    config = with_values(small_config(objective="acn"), {"prior.components": 1})
    acn = ACN(config, (1, 8, 8))
    code, neighbour = torch.randn(4, 4), torch.randn(4, 4)
    prior = acn.prior(neighbour)
    mean, scale = prior.means[..., 0], prior.log_scales[..., 0].exp()
    analytic = (torch.log(scale) + (1 + (code - mean) ** 2) / (2 * scale**2) - 0.5).sum(-1)
    estimate = acn.kl_estimate(Posterior(code), neighbour, 20000, torch.Generator().manual_seed(1))
    assert torch.allclose(estimate, analytic, rtol=0.03, atol=0.05)
    vae = ACN(small_config(objective="vae"), (1, 8, 8))
    assert torch.allclose(vae.kl_estimate(Posterior(code), None, 1), 0.5 * (code**2).sum(-1))


def test_mixture_log_density_matches_direct_computation() -> None:
    torch.manual_seed(0)
    logits, means, log_scales = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 2, 4) * 0.3
    z = torch.randn(3, 2)
    mixture = DiagonalMixture(logits, means, log_scales)
    weights = torch.softmax(logits, -1)
    expected = torch.zeros(3)
    for b in range(3):
        for d in range(2):
            density = sum(
                weights[b, d, m] * torch.exp(torch.distributions.Normal(means[b, d, m], log_scales[b, d, m].exp())
                                             .log_prob(z[b, d]))
                for m in range(4)
            )
            expected[b] += torch.log(density)
    assert torch.allclose(mixture.log_prob(z), expected, atol=1e-5)
    assert torch.allclose(mixture.log_weights.exp().sum(-1), torch.ones(3, 2), atol=1e-6)


def test_conditional_prior_shapes_weights_and_skips() -> None:
    prior = ConditionalPrior(code_size=16, hidden=512, layers=3, components=10)
    assert [layer.in_features for layer in prior.hidden_layers] == [16, 16 + 512, 16 + 512]
    assert prior.output.in_features == 3 * 512  # every hidden layer feeds the output
    mixture = prior(torch.randn(7, 16))
    assert mixture.means.shape == (7, 16, 10)
    assert torch.allclose(mixture.log_weights.exp().sum(-1), torch.ones(7, 16), atol=1e-5)
    assert mixture.sample().shape == (7, 16)
    assert UnconditionalPrior(16, 10)(3).log_prob(torch.zeros(3, 16)).shape == (3,)


@pytest.mark.parametrize("parameters", [1, 256, 15])  # bernoulli, categorical, 5 logistics
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("conditioning", ["global", "spatial"])
def test_gated_pixelcnn_is_causal(parameters: int, channels: int, conditioning: str) -> None:
    """d output(i) / d x(j) == 0 for every pixel j >= i (raster order), all layers and masks;
    every pixel's output depends on z."""
    torch.manual_seed(0)
    height = width = 8
    net = GatedPixelCNN((channels, height, width), code_size=3, parameters=parameters, channels=8, layers=4,
                        conditioning=conditioning, map_channels=4, map_hidden=16)
    for name, parameter in net.named_parameters():  # avoid zero-initialised paths hiding a leak
        if not name.startswith("condition."):  # z's map keeps its default scale: no saturated gates
            parameter.data.normal_(0, 0.3)
    x = torch.rand(1, channels, height, width, requires_grad=True)
    z = torch.randn(1, 3, requires_grad=True)
    logits = net(z, x)
    (z_grad,) = torch.autograd.grad(logits[0, :, -1, -1].sum() + logits[0, :, 0, 0].sum(), z, retain_graph=True)
    assert z_grad.abs().sum() > 0
    for i in range(height * width):
        row, column = divmod(i, width)
        out = logits[0, ..., row, column].sum()
        (grad,) = torch.autograd.grad(out, x, retain_graph=True)
        influence = grad[0].abs().sum(0).flatten()  # per pixel, all channels
        assert torch.all(influence[i:] == 0), f"pixel {i} sees pixels {torch.nonzero(influence[i:]).flatten() + i}"
        if i > 0:
            assert influence[:i].sum() > 0, f"pixel {i} sees none of its past"


def test_context_dropout_hides_that_share_of_pixels_and_keeps_the_order() -> None:
    """A hidden context pixel influences no output; about `rate` of them are hidden; what is
    left is still causal; with rate 0 (the default, as at evaluation) nothing is hidden."""
    torch.manual_seed(0)
    net = GatedPixelCNN((1, 8, 8), code_size=3, parameters=1, channels=8, layers=3, conditioning="spatial",
                        map_channels=4, map_hidden=16)
    x = torch.rand(256, 1, 8, 8, requires_grad=True)
    z = torch.randn(256, 3)
    torch.testing.assert_close(net(z, x), net(z, x, context_dropout=0.0))
    (grad,) = torch.autograd.grad(net(z, x).sum(), x)
    shown_without = (grad[:, 0, :7] != 0).float().mean()  # the last row is nobody's context
    assert shown_without == 1.0
    (grad,) = torch.autograd.grad(net(z, x, context_dropout=0.4).sum(), x)
    shown = (grad[:, 0, :7] != 0).float().mean()
    assert abs(float(shown) - 0.6) < 0.03, shown
    one = x[:1].detach().clone().requires_grad_(True)
    torch.manual_seed(3)
    logits = net(z[:1], one, context_dropout=0.5)
    for i in range(64):
        (g,) = torch.autograd.grad(logits[0, 0].flatten()[i], one, retain_graph=True)
        assert torch.all(g.flatten()[i:] == 0), f"pixel {i} sees a later pixel under context dropout"


@pytest.mark.parametrize("encoder", ["conv", "resnet", "mlp"])
def test_initialised_codes_spread_as_asked_on_their_batch(encoder: str) -> None:
    """Every layer's output has unit variance on the batch, and the codes the asked spread per
    dimension, centred; PyTorch's own init leaves them ~1e-3 apart."""
    torch.manual_seed(0)
    acn = ACN(small_config(objective="acn", encoder=encoder), (1, 8, 8))
    x = (torch.rand(64, 1, 8, 8) > 0.6).float()
    acn.requires_grad_(False)
    assert float(acn.encode(x).std(dim=0).mean()) < 0.1
    acn.initialise_codes(x, 2.5)
    outputs: list[torch.Tensor] = []
    layers = [m for m in acn.encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for layer in layers[:-1]]
    code = acn.encode(x)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(code.std(dim=0).mean(), torch.tensor(2.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(code.mean(dim=0), torch.zeros(4), rtol=0, atol=1e-4)
    assert [round(float(out.std()), 4) for out in outputs] == [1.0] * (len(layers) - 1)
    other = (torch.rand(64, 1, 8, 8) > 0.6).float()  # a scale, not a fit: another batch spreads alike
    assert 1.5 < float(acn.encode(other).std(dim=0).mean()) < 3.5


def test_context_dropout_falls_to_zero_over_its_steps() -> None:
    from acn_dist.model.acn import context_dropout_rate

    assert [context_dropout_rate(step, 0.8, 4) for step in range(6)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    assert context_dropout_rate(0, 0.5, 0) == context_dropout_rate(10**6, 0.5, 0) == 0.5


@pytest.mark.parametrize("decoder", ["deconv", "pixelcnn", "pixelcnn/spatial"])
@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_shapes_nats_and_no_gradient_into_neighbour_code(encoder: str, decoder: str) -> None:
    torch.manual_seed(0)
    decoder, _, conditioning = decoder.partition("/")
    acn = ACN(small_config(objective="acn", encoder=encoder, decoder=decoder,
                           pixelcnn_conditioning=conditioning or "global"), (1, 28, 28))
    x = (torch.rand(5, 1, 28, 28) > 0.5).float()
    neighbour = torch.randn(5, 4, requires_grad=True)
    code, losses = acn(x, lambda c: lambda: neighbour)
    assert code.shape == (5, 4)
    for term in (losses.total, losses.kl, losses.reconstruction, losses.prior_fit):
        assert term.shape == (5,)
    assert torch.allclose(losses.total, losses.kl + losses.reconstruction)
    # An untrained Bernoulli decoder is close to 0.5 per pixel: ln 2 nats each.
    assert 0.5 * 784 * math.log(2) < float(losses.reconstruction.detach().mean()) < 2 * 784 * math.log(2)
    acn.training_loss(losses).backward()
    assert neighbour.grad is None
    assert acn.encoder.parameters().__next__().grad is not None


def test_categorical_reconstruction_is_in_nats_per_image() -> None:
    x = torch.randint(0, 256, (2, 1, 4, 4)).float() / 255
    uniform_logits = torch.zeros(2, 256, 4, 4)  # [B, C * 256, H, W]
    nats = Categorical(1).nats(uniform_logits, x)
    assert torch.allclose(nats, torch.full((2,), 16 * math.log(256)))


def test_acn_refuses_to_run_without_neighbour_codes() -> None:
    acn = ACN(small_config(objective="acn"), (1, 8, 8))
    with pytest.raises(ValueError, match="neighbour codes"):
        acn(torch.zeros(1, 1, 8, 8))


def test_kl_warmup_weight_follows_its_schedule() -> None:
    from acn_dist.model.acn import kl_weight

    assert [kl_weight(step, 4) for step in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == kl_weight(10**6, 0) == 1.0


def test_free_bits_shape_the_training_loss_never_the_reported_code_length() -> None:
    torch.manual_seed(0)
    acn = ACN(small_config(objective="acn"), (1, 8, 8))
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    neighbour = torch.randn(16, 4)
    generator = torch.Generator().manual_seed(1)
    losses = acn.losses(x, acn.posterior(x), neighbour, generator)
    # the reported terms: the full KL, summed over dimensions, whatever free bits the loss uses
    torch.testing.assert_close(losses.kl, losses.kl_per_dimension.sum(-1))
    torch.testing.assert_close(losses.total, losses.kl + losses.reconstruction)
    allowance = float(losses.kl_per_dimension.detach().mean(0).max()) + 1.0  # above every dimension's KL
    plain = acn.training_loss(losses)
    torch.testing.assert_close(plain, losses.total.mean() + losses.prior_fit.mean())
    # every dimension under its allowance: the encoder feels only the reconstruction...
    with_free_bits = acn.training_loss(losses, free_bits=allowance)
    encoder_weight = next(acn.encoder.parameters())
    (from_loss,) = torch.autograd.grad(with_free_bits, encoder_weight, retain_graph=True)
    (from_reconstruction,) = torch.autograd.grad(losses.reconstruction.mean(), encoder_weight, retain_graph=True)
    torch.testing.assert_close(from_loss, from_reconstruction)
    # ...while the prior network still fits the KL
    prior_weight = acn.prior.output.weight
    (prior_grad,) = torch.autograd.grad(with_free_bits, prior_weight, retain_graph=True)
    assert prior_grad.abs().sum() > 0
    # and with no allowance at all the two losses agree
    torch.testing.assert_close(acn.training_loss(losses, free_bits=1e-9), plain)


@pytest.mark.parametrize("channels", [1, 3])
def test_discretised_logistic_is_a_distribution_over_the_256_values(channels: int) -> None:
    from acn_dist.model.likelihoods import DiscretisedLogistic

    torch.manual_seed(0)
    likelihood = DiscretisedLogistic(channels, components=3)
    raw = torch.randn(2, channels * 9, 1, 1) * 2
    values = torch.arange(256.0).reshape(256, 1, 1, 1) / 255
    log_probs = torch.stack([likelihood.log_probs(raw, v.expand(2, channels, 1, 1)) for v in values])
    torch.testing.assert_close(log_probs.exp().sum(0), torch.ones(2, channels, 1, 1), atol=1e-4, rtol=0)
    x = torch.randint(0, 256, (2, channels, 1, 1)).float() / 255
    assert torch.all(likelihood.nats(raw, x) > 0)
    sample = likelihood.sample(raw, torch.Generator().manual_seed(0))
    assert sample.shape == (2, channels, 1, 1) and torch.equal(torch.round(sample * 255) / 255, sample)
    mean = likelihood.mean(raw)
    assert mean.shape == (2, channels, 1, 1) and torch.all((mean >= 0) & (mean <= 1))


def test_the_forward_pass_decodes_before_it_waits_for_the_neighbour_code() -> None:
    """The store's search overlaps the decoder: the wait for ĉ comes after decoding, and the
    losses are those of the same batch computed with ĉ at hand."""
    torch.manual_seed(0)
    acn = ACN(small_config(objective="acn"), (1, 8, 8))
    x = (torch.rand(6, 1, 8, 8) > 0.5).float()
    neighbour = torch.randn(6, 4)
    events: list[str] = []
    acn.decoder.register_forward_hook(lambda *_: events.append("decoded"))

    def ask(code: torch.Tensor):
        events.append("asked")
        return lambda: events.append("waited") or neighbour

    torch.manual_seed(1)
    code, deferred = acn(x, ask)
    assert events == ["asked", "decoded", "waited"]
    torch.manual_seed(1)
    direct = acn.losses(x, acn.posterior(x), neighbour)
    for name in ("total", "kl", "reconstruction", "prior_fit"):
        torch.testing.assert_close(getattr(deferred, name), getattr(direct, name))


def test_residual_encoder_and_logistic_decoder_shapes() -> None:
    config = from_dict({"model": {"encoder": "resnet", "code_size": 4, "hidden": 32, "channels": 4},
                        "data": {"binarize": "none"}, "prior": {"hidden": 32, "components": 3}})
    acn = ACN(config, (1, 28, 28))
    x = torch.randint(0, 256, (3, 1, 28, 28)).float() / 255
    code, losses = acn(x, lambda c: lambda: torch.randn(3, 4))
    assert code.shape == (3, 4) and losses.reconstruction.shape == (3,)
    assert acn.likelihood.parameters == 15  # 5 logistics x (weight, mean, scale)
    assert 784 * 0.5 < float(losses.reconstruction.detach().mean()) < 784 * math.log(256) * 2


def test_a_learnt_sigma_posterior_is_the_normal_it_names_with_the_analytic_and_mc_kl() -> None:
    torch.manual_seed(0)
    code, log_scale = torch.randn(5, 3), torch.randn(5, 3) * 0.5
    posterior = Posterior(code, log_scale)
    normal = torch.distributions.Normal(code, log_scale.exp())
    z = posterior.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(posterior.log_prob_per_dimension(z), normal.log_prob(z))
    draws = torch.stack([posterior.sample() for _ in range(20000)])
    torch.testing.assert_close(draws.std(0), log_scale.exp(), rtol=0.05, atol=0.0)
    standard = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    exact = torch.distributions.kl_divergence(normal, standard)
    torch.testing.assert_close(StandardNormal().kl_per_dimension(posterior), exact)
    # the mixture prior's Monte-Carlo KL agrees with the closed form for a one-component N(0, 1)
    mixture = DiagonalMixture(torch.zeros(5, 3, 1), torch.zeros(5, 3, 1), torch.zeros(5, 3, 1))
    estimate = mixture.kl_estimate(posterior, 20000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(estimate, exact.sum(-1), rtol=0.03, atol=0.05)
    # a boolean mask picks the same rows of both halves
    assert torch.equal(posterior[torch.tensor([True, False, True, False, False])].log_scale, log_scale[[0, 2]])


@pytest.mark.parametrize("objective", ["acn", "vae"])
def test_learned_posterior_gives_codes_of_the_code_size_and_sigma_starts_at_one(objective: str) -> None:
    torch.manual_seed(0)
    acn = ACN(small_config(objective=objective, posterior="learned"), (1, 8, 8))
    x = (torch.rand(32, 1, 8, 8) > 0.5).float()
    acn.initialise_codes(x, 1.0)
    posterior = acn.posterior(x)
    assert acn.encode(x).shape == posterior.code.shape == posterior.log_scale.shape == (32, 4)
    torch.testing.assert_close(posterior.log_scale, torch.zeros(32, 4))  # sigma = 1, as the unit posterior
    assert 0.7 < float(posterior.code.detach().std(dim=0).mean()) < 1.3
    losses = acn.losses(x, posterior, torch.randn(32, 4), torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(acn.training_loss(losses), acn.encoder.net[-1].weight)
    assert grad[4:].abs().sum() > 0  # the loss trains sigma


def test_auxiliary_reconstruction_reads_z_alone_and_never_enters_the_reported_code_length() -> None:
    torch.manual_seed(0)
    config = small_config(decoder="pixelcnn", pixelcnn_conditioning="spatial", pixelcnn_auxiliary=0.5)
    acn = ACN(config, (1, 8, 8))
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    z = torch.randn(16, 4)
    decoded, auxiliary = acn.decoder.decode(z, x)
    torch.testing.assert_close(decoded, acn.decoder(z, x))  # the PixelCNN's own output is unchanged
    _, from_other_pixels = acn.decoder.decode(z, 1 - x)
    torch.testing.assert_close(auxiliary, from_other_pixels)  # no pixel context...
    _, from_other_z = acn.decoder.decode(torch.randn(16, 4), x)
    assert (auxiliary - from_other_z).abs().max() > 1e-4  # ...z alone

    neighbour = torch.randn(16, 4)
    losses = acn.losses(x, acn.posterior(x), neighbour, torch.Generator().manual_seed(1))
    assert losses.auxiliary is not None and losses.auxiliary.shape == (16,) and bool((losses.auxiliary > 0).all())
    torch.testing.assert_close(losses.total, losses.kl + losses.reconstruction)
    torch.testing.assert_close(acn.training_loss(losses),
                               losses.total.mean() + losses.prior_fit.mean() + 0.5 * losses.auxiliary.mean())
    (to_encoder,) = torch.autograd.grad(losses.auxiliary.mean(), next(acn.encoder.parameters()))
    assert to_encoder.abs().sum() > 0  # the auxiliary term pulls on the code

    acn.eval()  # evaluation: the same reported terms, no auxiliary
    evaluated = acn.losses(x, acn.posterior(x), neighbour, torch.Generator().manual_seed(1))
    assert evaluated.auxiliary is None
    torch.testing.assert_close(evaluated.total, losses.total.detach())
