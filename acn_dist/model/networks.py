"""Encoders (x -> code c, the mean of q(z|x) = N(c, I)) and decoders (z -> parameters of r(x|z)).

Images are [B, C, H, W] floats in [0, 1]. Decoders emit [B, C * P, H, W]: the P parameters per
pixel and channel that their likelihood (`acn_dist.model.likelihoods`) reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], code_size: int, hidden: int = 512):
        super().__init__()
        channels, height, width = image_shape
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, code_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvEncoder(nn.Module):
    """VGG-style: two blocks of (conv3x3, ReLU, conv3x3, ReLU, maxpool 2), then two dense layers."""

    def __init__(self, image_shape: tuple[int, int, int], code_size: int, channels: int = 32,
                 hidden: int = 512):
        super().__init__()
        in_channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"conv encoder needs H and W divisible by 4, got {height}x{width}; use model.encoder=mlp")

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.net = nn.Sequential(
            *block(in_channels, channels), *block(channels, 2 * channels), nn.Flatten(),
            nn.Linear(2 * channels * (height // 4) * (width // 4), hidden), nn.ReLU(),
            nn.Linear(hidden, code_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(ReLU(x)))), channels kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualEncoder(nn.Module):
    """A stronger conv encoder: a 3x3 stem, then two stages of `blocks` residual blocks each
    followed by a stride-2 conv doubling the channels (H/4 x W/4 x 4c), then two dense layers."""

    def __init__(self, image_shape: tuple[int, int, int], code_size: int, channels: int = 32,
                 hidden: int = 512, blocks: int = 2):
        super().__init__()
        in_channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"residual encoder needs H and W divisible by 4, got {height}x{width}; use model.encoder=mlp")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        for stage in range(2):
            width_now = channels * 2**stage
            layers += [ResidualBlock(width_now) for _ in range(blocks)]
            layers.append(nn.Conv2d(width_now, 2 * width_now, 4, stride=2, padding=1))
        self.net = nn.Sequential(
            *layers, nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * channels * (height // 4) * (width // 4), hidden), nn.ReLU(),
            nn.Linear(hidden, code_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeconvDecoder(nn.Module):
    """z -> dense -> [2c, H/4, W/4] -> two transposed convs -> logits (independent pixels)."""

    def __init__(self, image_shape: tuple[int, int, int], code_size: int, parameters: int,
                 channels: int = 32, hidden: int = 512):
        super().__init__()
        self.image_channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"deconv decoder needs H and W divisible by 4, got {height}x{width}")
        self.base = (2 * channels, height // 4, width // 4)
        self.dense = nn.Sequential(
            nn.Linear(code_size, hidden), nn.ReLU(),
            nn.Linear(hidden, 2 * channels * (height // 4) * (width // 4)), nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(channels, self.image_channels * parameters, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None, context_dropout: float = 0.0) -> torch.Tensor:
        """Parameters of r(x|z); `x` and `context_dropout` are unused (pixels are independent given z)."""
        return self.deconv(self.dense(z).reshape(-1, *self.base))


def _project(linear: nn.Linear, cond: torch.Tensor) -> torch.Tensor:
    """A conditioning input as a bias of the gates: z [B, D] -> [B, 2c, 1, 1] (the same at every
    pixel), or a map [B, D, H, W] -> [B, 2c, H, W] (a 1x1 convolution; one bias per pixel)."""
    if cond.dim() == 2:
        return linear(cond)[:, :, None, None]
    return linear(cond.movedim(1, -1)).movedim(-1, 1)


class GatedLayer(nn.Module):
    """One layer of a gated PixelCNN (van den Oord et al., 2016), conditioned on z or on a map of z.

    The vertical stack sees rows above (and, after its shift down by one row, only those) and the
    horizontal stack sees pixels to the left in the current row; with `first=True` (mask type A)
    the current pixel itself is excluded, later layers (type B) include it. The conditioning input
    depends on z only, never on x, so conditioning every pixel on all of it breaks no ordering.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, cond_size: int, first: bool):
        super().__init__()
        self.first, self.half = first, kernel // 2
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (self.half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.cond_vertical = nn.Linear(cond_size, 2 * channels)
        self.cond_horizontal = nn.Linear(cond_size, 2 * channels)

    @staticmethod
    def _gate(pre: torch.Tensor) -> torch.Tensor:
        a, b = pre.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Vertical: output row i covers input rows i-half..i (padding on top only).
        v_pre = self.vertical(F.pad(v, (self.half, self.half, self.half, 0)))
        # Shift down one row, so the horizontal stack at row i sees vertical rows < i only.
        v_shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]
        # Horizontal: output column j covers input columns j-half..j; type A shifts right by one.
        h_pre = self.horizontal(F.pad(h, (self.half, 0, 0, 0)))
        if self.first:
            h_pre = F.pad(h_pre, (1, 0, 0, 0))[:, :, :, :-1]
        cond_v = _project(self.cond_vertical, cond)
        cond_h = _project(self.cond_horizontal, cond)
        v_out = self._gate(v_pre + cond_v)
        h_out = self.horizontal_out(self._gate(h_pre + self.vertical_to_horizontal(v_shifted) + cond_h))
        if not self.first:
            h_out = h_out + h  # residual; never in layer A, where h is the image itself
        return v_out, h_out


class GatedPixelCNN(nn.Module):
    """Autoregressive decoder r(x|z) = prod_i r(x_i | x_<i, z) in raster order.

    All channels of a pixel are predicted together from earlier pixels (no within-pixel ordering).
    `conditioning="global"` adds a projection of z to every gate, the same at every pixel (van den
    Oord et al., 2016); `"spatial"` first decodes z to a map of the image's size with the deconv
    decoder's network and adds a 1x1 projection of it at each pixel, as the PixelVAE does
    (Gulrajani et al., 2017), so that z can say what is where without the PixelCNN working it out.
    """

    def __init__(self, image_shape: tuple[int, int, int], code_size: int, parameters: int,
                 channels: int = 64, layers: int = 6, kernel: int = 5, conditioning: str = "global",
                 map_channels: int = 32, map_hidden: int = 512, auxiliary: bool = False):
        super().__init__()
        self.image_channels, height, width = image_shape
        self.condition: nn.Module = nn.Identity()
        cond_size = code_size
        if conditioning == "spatial":  # z -> [B, channels, H, W]
            self.condition = DeconvDecoder((1, height, width), code_size, channels, map_channels, map_hidden)
            cond_size = channels
        elif conditioning != "global":
            raise ValueError(f"model.pixelcnn_conditioning must be global or spatial, got {conditioning!r}")
        self.layers = nn.ModuleList(
            GatedLayer(self.image_channels if i == 0 else channels, channels,
                       7 if i == 0 else kernel, cond_size, first=i == 0)
            for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, self.image_channels * parameters, 1),
        )
        # x's parameters from z's map alone (no pixel context): the auxiliary reconstruction
        self.auxiliary_head: nn.Module | None = None
        if auxiliary:
            if conditioning != "spatial":
                raise ValueError("the auxiliary reconstruction reads z's spatial map: it needs conditioning='spatial'")
            self.auxiliary_head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, self.image_channels * parameters, 1))

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None, context_dropout: float = 0.0) -> torch.Tensor:
        """Parameters for every pixel given the pixels before it (teacher forcing on `x`) and z.

        `context_dropout` (training only, against posterior collapse): each pixel of the context
        is hidden (set to 0, midway between the centred values -1 and 1) with this probability,
        so that the local statistics explain less and z has to say more. Hiding context never
        reveals a later pixel: the ordering is untouched."""
        return self.head(self._features(z, x, context_dropout)[0])

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None,
               context_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s parameters and, from the auxiliary head, parameters for every pixel from
        z's map alone (training with the auxiliary reconstruction; `forward` never computes them,
        so sampling pixel by pixel does not pay for them)."""
        if self.auxiliary_head is None:
            raise ValueError("this PixelCNN has no auxiliary head: build it with auxiliary=True")
        features, cond = self._features(z, x, context_dropout)
        return self.head(features), self.auxiliary_head(cond)

    def _features(self, z: torch.Tensor, x: torch.Tensor | None,
                  context_dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The last gated layer's horizontal stack and z's conditioning (map or vector)."""
        if x is None:
            raise ValueError("the PixelCNN decoder needs the image x (teacher forcing); use sample()")
        inputs = x * 2 - 1  # centre the [0, 1] pixels
        if context_dropout > 0:
            shown = torch.rand_like(inputs[:, :1]) >= context_dropout  # one draw per pixel, all channels
            inputs = inputs * shown
        cond = self.condition(z)
        v, h = inputs, inputs
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return h, cond


@torch.no_grad()
def scale_to_data(network: nn.Module, x: torch.Tensor, output_std: float) -> None:
    """Data-dependent initialisation ("layer-sequential unit variance", Mishkin & Matas, 2016):
    in order, each convolution and dense layer of `network` is rescaled so that its output on the
    batch `x` has unit variance; the last one instead so that each output has standard deviation
    `output_std` over the batch, and mean zero. With PyTorch's default init the codes of a deep
    encoder start ~1e-3 apart, far under the unit noise of q(z|x) = N(c, I), so z says nothing of
    x until the decoder has learnt to do without it."""
    layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    seen: dict[nn.Module, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        hook = layer.register_forward_hook(lambda module, _inputs, output: seen.__setitem__(module, output))
        network(x)
        hook.remove()
        last = i == len(layers) - 1
        spread = seen[layer].std(dim=0).mean() if last else seen[layer].std()
        factor = (output_std if last else 1.0) / spread if spread > 0 else 1.0  # a dead layer stays as it is
        layer.weight.mul_(factor)
        if layer.bias is not None:
            layer.bias.mul_(factor)
    if layers and layers[-1].bias is not None:
        layers[-1].bias.sub_(network(x).mean(dim=0))


def build_encoder(kind: str, image_shape: tuple[int, int, int], code_size: int, hidden: int,
                  channels: int) -> nn.Module:
    if kind == "mlp":
        return MLPEncoder(image_shape, code_size, hidden)
    if kind == "resnet":
        return ResidualEncoder(image_shape, code_size, channels, hidden)
    return ConvEncoder(image_shape, code_size, channels, hidden)


def build_decoder(kind: str, image_shape: tuple[int, int, int], code_size: int, parameters: int,
                  hidden: int, channels: int, pixelcnn_channels: int, pixelcnn_layers: int,
                  pixelcnn_conditioning: str = "global", pixelcnn_auxiliary: bool = False) -> nn.Module:
    """A decoder emitting `parameters` numbers per pixel and channel."""
    if kind == "pixelcnn":
        return GatedPixelCNN(image_shape, code_size, parameters, pixelcnn_channels, pixelcnn_layers,
                             conditioning=pixelcnn_conditioning, map_channels=channels, map_hidden=hidden,
                             auxiliary=pixelcnn_auxiliary)
    return DeconvDecoder(image_shape, code_size, parameters, channels, hidden)
