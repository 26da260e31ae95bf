"""The paper's s/t network: a deep residual network with weight normalisation and batch norm.

Structure, as in the authors' code (``masked_conv_aff_coupling``/``conv_ch_aff_coupling``,
``resnet`` and ``residual_block`` in ``real_nvp_multiscale_dataset.py``): the (masked) input is
batch-normalised, multiplied by ``in_gain`` (the authors: 2 in checkerboard couplings, 1 in
channel-wise ones), concatenated with its negation and passed through a ReLU ("concat-ReLU", so no
information is lost at the first non-linearity); a checkerboard coupling's mask ``b`` is appended
as one more input channel (``mask``). A 3×3 convolution lifts this to ``hidden`` maps;
``num_blocks`` pre-activation residual blocks (BN → ReLU → 3×3 conv, twice, plus the identity)
follow, and 1×1 skip convolutions collect the lifted input and every block's output into a
running sum; the sum goes through BN → ReLU → a final 1×1 convolution to ``out_channels``.

Every batch norm has a learned shift but no gain (the authors' ``scale=False``), ε = 1e-4. All
convolutions are weight-normalised; the ones the authors build with ``scale=False`` have no
magnitude (unit-norm filters): the first 3×3 convolution and the first convolution of each block,
which a batch norm follows, so a magnitude there could not change the output and the L2 penalty
would only shrink it. The final one starts at a small scale (``out_scale``): the coupling begins
close to the identity, yet every parameter already receives a gradient. ``out_bias=False`` drops
the output bias where it would be redundant (an additive coupling's shift followed by batch norm,
which removes any constant shift).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .context import ContextSlot
from .evalcache import cached, forget
from .norm import BatchNorm2d
from .weightnorm import WNConv2d


class ResidualBlock(nn.Module):
    """``x + conv(dropout(relu(bn(conv(relu(bn(x)))))))`` with 3×3 weight-normalised
    convolutions, the first without magnitude (a batch norm follows it), batch norms without gain.
    ``dropout``: the probability of zeroing a unit before the second convolution (Flow++'s place
    for it, between the two convolutions of a residual block; 0: no dropout layer)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # The ReLUs act in place on batch-norm outputs (batch norm's backward needs its input,
        # not its output): one activation fewer to allocate and keep for each.
        self.net = nn.Sequential(
            BatchNorm2d(channels, gain=False),
            nn.ReLU(inplace=True),
            WNConv2d(channels, channels, 3, padding=1, bias=False, scale=False),
            BatchNorm2d(channels, gain=False),
            nn.ReLU(inplace=True),
            WNConv2d(channels, channels, 3, padding=1, bias=True),
        )
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: Tensor) -> Tensor:
        # The sum is taken in place in the convolution's fresh output (which no backward pass
        # needs): one activation fewer to allocate and fill per block (see BENCHMARKS.md).
        if self.net[3].training or torch.is_grad_enabled():
            forget(self, "_fold_cache")
            if self.dropout is None:
                return self.net(x).add_(x)
            bn1, relu1, conv1, bn2, relu2, conv2 = self.net
            return conv2(self.dropout(relu2(bn2(conv1(relu1(bn1(x))))))).add_(x)
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
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = bn.weight * scale
            weight = conv._compute_weight(conv.weight_v, conv.magnitude) * scale.view(-1, 1, 1, 1)
            return weight, bn.bias - bn.running_mean * scale

        inputs = tuple(t for t in (conv.weight_v, conv.magnitude, bn.weight, bn.bias, bn.running_mean,
                                   bn.running_var) if t is not None)
        return cached(self, "_fold_cache", inputs, fold, conv.channels_last)


class ResNet(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)``; see the module docstring.

    ``mask``: a ``(1, 1, H, W)`` tensor appended to the input as one more channel (after the
    concat-ReLU; a 0/1 mask passes a ReLU unchanged), or ``None``. ``in_gain`` multiplies the
    batch-normalised input. ``context``: the slot of a conditional flow (see
    :mod:`realnvp.nets.context`), whose ``(B, k)`` context joins the first convolution's input
    as ``k`` constant channels (after the concat-ReLU, so a signed context passes unchanged).
    ``dropout``: each residual block's dropout probability (see :class:`ResidualBlock`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_blocks: int = 8,
        out_scale: float = 1e-2,
        out_bias: bool = True,
        mask: Tensor | None = None,
        in_gain: float = 1.0,
        context: ContextSlot | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.context = context
        if mask is not None and (mask.dim() != 4 or mask.shape[:2] != (1, 1)):
            raise ValueError(f"mask must have shape (1, 1, H, W), got {tuple(mask.shape)}")
        self.in_gain = float(in_gain)
        self.register_buffer("mask", None if mask is None else mask.detach().clone(), persistent=False)
        extra = (0 if mask is None else 1) + (0 if context is None else context.features)
        self.in_norm = BatchNorm2d(in_channels, gain=False)
        self.in_conv = WNConv2d(2 * in_channels + extra, hidden, 3, padding=1, scale=False)
        self.in_skip = WNConv2d(hidden, hidden, 1)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, dropout) for _ in range(num_blocks))
        self.skips = nn.ModuleList(WNConv2d(hidden, hidden, 1) for _ in range(num_blocks))
        self.out = nn.Sequential(
            BatchNorm2d(hidden, gain=False),
            nn.ReLU(inplace=True),
            WNConv2d(hidden, out_channels, 1, bias=out_bias, init_scale=out_scale),
        )
        if out_bias:
            with torch.no_grad():
                self.out[-1].bias.zero_()

    def _lift_input(self, x: Tensor) -> Tensor:
        """``relu([g·bn(x), −g·bn(x), mask])``, the first convolution's input."""
        x = self.in_norm(x)
        if self.in_gain != 1.0:
            x = x * self.in_gain
        parts = [x, -x]
        if self.mask is not None:
            parts.append(self.mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:]))
        lifted = torch.relu_(torch.cat(parts, dim=1))
        if self.context is None:
            return lifted
        c = self.context.read().to(x.dtype)
        return torch.cat((lifted, c[:, :, None, None].expand(-1, -1, *x.shape[2:])), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(self._lift_input(x))
        skip = self.in_skip(x)
        for block, proj in zip(self.blocks, self.skips, strict=True):
            x = block(x)
            skip = skip.add_(proj(x))  # a running sum: nothing downstream needs its old value
        return self.out(skip)
