"""The paper's s/t network: a deep residual network with weight normalisation and batch norm.

Structure (paper App. E and the authors' code): the (masked) input is batch-normalised, then
concatenated with its negation and passed through a ReLU ("concat-ReLU", so no information is
lost at the first non-linearity); a 3×3 convolution lifts it to ``hidden`` maps; ``num_blocks``
pre-activation residual blocks (BN → ReLU → 3×3 conv, twice, plus the identity) follow, and a
1×1 skip convolution collects every block's output into a running sum; the sum goes through
BN → ReLU → a final 1×1 convolution to ``out_channels``.

All convolutions are weight-normalised. The final one starts at a small scale (``out_scale``):
the coupling begins close to the identity, yet every parameter already receives a gradient.
``out_bias=False`` drops the output bias where it would be redundant (an additive coupling's
shift followed by batch norm, which removes any constant shift).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .evalcache import cached, forget
from .norm import BatchNorm2d
from .weightnorm import WNConv2d


class ResidualBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))`` with 3×3 weight-normalised convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        # The ReLUs act in place on batch-norm outputs (batch norm's backward needs its input,
        # not its output): one activation fewer to allocate and keep for each.
        self.net = nn.Sequential(
            BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            WNConv2d(channels, channels, 3, padding=1, bias=False),
            BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            WNConv2d(channels, channels, 3, padding=1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        # The sum is taken in place in the convolution's fresh output (which no backward pass
        # needs): one activation fewer to allocate and fill per block (see BENCHMARKS.md).
        if self.net[3].training or torch.is_grad_enabled():
            forget(self, "_fold_cache")
            return self.net(x).add_(x)
        # Evaluation and sampling: the second batch norm uses its running averages, a fixed
        # per-channel affine map, so it folds into the convolution before it (one pass over the
        # activations fewer per block; same result to round-off).
        bn1, relu1, conv1, _, relu2, conv2 = self.net
        weight, bias = self._folded_conv()
        h = relu2(conv1._conv_forward(relu1(bn1(x)), weight, bias))
        return conv2(h).add_(x)

    def _folded_conv(self) -> tuple[Tensor, Tensor]:
        """``(weight, bias)`` of ``bn2 ∘ conv1`` with bn2's running statistics."""
        conv, bn = self.net[2], self.net[3]

        def fold():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv._compute_weight(conv.weight_v, conv.weight_g) * scale.view(-1, 1, 1, 1)
            return weight, bn.bias - bn.running_mean * scale

        inputs = (conv.weight_v, conv.weight_g, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        return cached(self, "_fold_cache", inputs, fold, conv.channels_last)


class ResNet(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)``; see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_blocks: int = 8,
        out_scale: float = 1e-2,
        out_bias: bool = True,
    ):
        super().__init__()
        self.in_norm = BatchNorm2d(in_channels)
        self.in_conv = WNConv2d(2 * in_channels, hidden, 3, padding=1)
        self.in_skip = WNConv2d(hidden, hidden, 1)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(num_blocks))
        self.skips = nn.ModuleList(WNConv2d(hidden, hidden, 1) for _ in range(num_blocks))
        self.out = nn.Sequential(
            BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            WNConv2d(hidden, out_channels, 1, bias=out_bias, init_scale=out_scale),
        )
        if out_bias:
            with torch.no_grad():
                self.out[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_norm(x)
        x = torch.relu_(torch.cat((x, -x), dim=1))
        x = self.in_conv(x)
        skip = self.in_skip(x)
        for block, proj in zip(self.blocks, self.skips, strict=True):
            x = block(x)
            skip = skip.add_(proj(x))  # a running sum: nothing downstream needs its old value
        return self.out(skip)
