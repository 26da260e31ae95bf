"""Glow's own pieces (Kingma & Dhariwal 2018): its coupling network and coupling, the learned
split prior and top prior as bijectors, and the shift that centres the data.

Everything follows the authors' released code (openai/glow, ``model.py`` and ``tfops.py``) where
it is more specific than the paper; the differences from the paper's text are named where they
occur.

- :class:`GlowNet`, the coupling network ``NN()`` of §3.3 and App. (code: ``f``): a 3×3 conv with
  ``hidden`` channels, actnorm, ReLU; a 1×1 conv with ``hidden`` channels, actnorm, ReLU; a
  zero-initialised 3×3 conv (:class:`ZeroConv2d`). The hidden convs have no bias (the actnorm
  that follows has one) and start from N(0, 0.05²) weights. Every 3×3 conv sees, as one extra
  input channel, the indicator of the zero padding (the code's ``edge_bias``, :func:`edge_pad`).
- :class:`GlowAffineCoupling`: ``y_b = (x_b + t) · sigmoid(h + 2)`` (the code's map, see the
  class); :class:`GlowAdditiveCoupling`: ``y_b = x_b + NN(x_a)``.
- :class:`SplitPrior`: Glow's learned prior on the factored-out half, written as a bijector so
  that the flow's standard-normal prior on the flat latent *is* Glow's prior (exactly the same
  density); :class:`LearnedPrior` likewise for the top of the flow (the code's ``--learntop``).
- :class:`Shift`: ``y = x + offset``; Glow's preprocessing is ``x − 0.5`` on data in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets.context import Conditioned, ContextSlot
from .base import Bijector, sum_except_batch, zero_log_det
from .coupling import AdditiveCoupling, _Coupling
from .masks import Halves
from .normalization import ActNorm

#: the code's ``sigmoid(h + 2.)``: a zero network output gives the scale sigmoid(2) ≈ 0.881
SCALE_OFFSET = 2.0


def edge_pad(x: Tensor, kernel_size: int) -> Tensor:
    """``(B, C, H, W) -> (B, C + 1, H + 2a, W + 2a)`` with ``a = (kernel_size − 1) / 2``: ``x``
    zero-padded by ``a`` on every side, plus one channel that is 1 on the padding and 0 inside,
    so a 'valid' convolution of the result is a 'same' convolution that can tell the image's
    border from zeros (the authors' ``add_edge_padding``). A 1×1 kernel gets ``x`` unchanged."""
    if kernel_size % 2 != 1:
        raise ValueError(f"edge padding needs an odd kernel size, got {kernel_size}")
    a = (kernel_size - 1) // 2
    if a == 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x.new_zeros(1, 1, h, w), (a, a, a, a), value=1.0).expand(b, 1, h + 2 * a, w + 2 * a)
    return torch.cat((F.pad(x, (a, a, a, a)), pad), dim=1)


class _Conv2d(nn.Module):
    """A 'same' 2-D convolution, with :func:`edge_pad` (``edge_bias``) or zero padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, edge_bias: bool,
                 bias: bool):
        super().__init__()
        self.kernel_size, self.edge_bias = kernel_size, bool(edge_bias)
        extra = 1 if edge_bias and kernel_size > 1 else 0
        self.conv = nn.Conv2d(in_channels + extra, out_channels, kernel_size, bias=bias,
                              padding=0 if edge_bias else kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(edge_pad(x, self.kernel_size) if self.edge_bias else x)


class ZeroConv2d(_Conv2d):
    """The authors' ``conv2d_zeros``: ``(conv(x) + b) · exp(logscale_factor · logs)`` per output
    channel, with the weight, ``b`` and ``logs`` all zero at the start (so the output starts at
    exactly 0 and the layer it feeds starts as its identity or its fixed point). ``(B, C_in, H, W)
    -> (B, C_out, H, W)``. ``logscale_factor = 3`` as in the code (a reparametrisation: the
    optimizer moves ``3·logs``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 edge_bias: bool = True, logscale_factor: float = 3.0):
        super().__init__(in_channels, out_channels, kernel_size, edge_bias, bias=True)
        self.logscale_factor = float(logscale_factor)
        self.logs = nn.Parameter(torch.zeros(out_channels))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.exp(self.logs * self.logscale_factor).to(x.dtype)
        return super().forward(x) * scale.view(1, -1, 1, 1)


class ActNormConv2d(_Conv2d):
    """The authors' ``conv2d`` with its defaults: a bias-free convolution with N(0, 0.05²) weights,
    then actnorm (data-dependent initialisation on the first training batch; its own bias is the
    layer's bias). ``(B, C_in, H, W) -> (B, C_out, H, W)``. The actnorm is the
    :class:`~realnvp.bijectors.ActNorm` bijector used for its output only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 edge_bias: bool = True, init_std: float = 0.05):
        super().__init__(in_channels, out_channels, kernel_size, edge_bias, bias=False)
        nn.init.normal_(self.conv.weight, 0.0, init_std)
        self.actnorm = ActNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(super().forward(x))[0]


class GlowNet(nn.Sequential):
    """Glow's coupling network (the code's ``f``): ``(B, in_channels, H, W) -> (B, out_channels,
    H, W)`` through conv3×3(hidden) → actnorm → ReLU → conv1×1(hidden) → actnorm → ReLU →
    :class:`ZeroConv2d` 3×3. Its output is exactly 0 until the last layer moves. ``dropout > 0``
    puts an ``nn.Dropout`` before the last convolution (beyond Glow's code, which has none; Flow++
    regularises its coupling networks so)."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512,
                 edge_bias: bool = True, dropout: float = 0.0):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers = [ActNormConv2d(in_channels, hidden_channels, 3, edge_bias), nn.ReLU(),
                  ActNormConv2d(hidden_channels, hidden_channels, 1, edge_bias), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers, ZeroConv2d(hidden_channels, out_channels, 3, edge_bias))


class GlowAffineCoupling(_Coupling):
    """Glow's affine coupling on the channel halves of ``(B, C, H, W)``, as in the authors' code
    (``revnet2d_step``, ``flow_coupling=1``):

    ``x_a, x_b = x[:, :C//2], x[:, C//2:]``; ``h = NN(x_a)`` with ``2·(C − C//2)`` channels;
    ``t = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)``;
    ``y_b = (x_b + t) · s``, ``y_a = x_a``, ``y = concat(y_a, y_b)``; log-det ``Σ log s``.
    Inverse: ``x_b = y_b / s − t``.

    The paper's Table 1 writes the map as ``y_a = exp(log s) ⊙ x_a + t`` with the network on the
    other half; its results come from the code's form above, which is what this layer computes.
    Differences that follow: the scale is bounded in (0, 1) (a contraction, which keeps deep
    flows stable), and with the network's last layer zero-initialised the layer starts as the
    fixed map ``y_b = sigmoid(2) · x_b`` ≈ 0.881·x_b, log-det ``(C − C//2)·H·W·log sigmoid(2)``
    (not as the identity; the actnorm of the next step absorbs the scale).

    Written through the package's coupling formula ``y_b = x_b·exp(s') + t'`` with
    ``s' = log sigmoid(h_s + 2)`` (a stable ``logsigmoid``) and ``t' = t · sigmoid(h_s + 2)``: the
    same map, so memory-saving backprop's fused step applies unchanged.
    """

    def __init__(self, channels: int, hidden_channels: int = 512, edge_bias: bool = True,
                 context: ContextSlot | None = None, dropout: float = 0.0):
        mask = Halves(channels)
        super().__init__(mask, _conditioned(GlowNet, mask.in_features, 2 * mask.out_features, context,
                                            hidden_channels, edge_bias, dropout))

    def _scale_and_shift(self, h: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        raw = h[:, 1::2] + SCALE_OFFSET
        return F.logsigmoid(raw), h[:, 0::2] * torch.sigmoid(raw)


class GlowAdditiveCoupling(AdditiveCoupling):
    """Glow's additive coupling (the code's ``flow_coupling=0``): ``y_b = x_b + NN(x_a)`` on the
    channel halves ``x_a = x[:, :C//2]``, ``x_b = x[:, C//2:]``; log-det 0. Starts as the identity
    (the network's last layer is zero-initialised)."""

    def __init__(self, channels: int, hidden_channels: int = 512, edge_bias: bool = True,
                 context: ContextSlot | None = None, dropout: float = 0.0):
        mask = Halves(channels)
        super().__init__(mask, _conditioned(GlowNet, mask.in_features, mask.out_features, context,
                                            hidden_channels, edge_bias, dropout))


def _conditioned(make, in_channels: int, out_channels: int, context: ContextSlot | None, *args):
    """``make(in_channels, out_channels, *args)``, or for a conditional flow the same network
    with the context's ``k`` channels added to its input (:class:`~realnvp.nets.context.Conditioned`)."""
    if context is None:
        return make(in_channels, out_channels, *args)
    return Conditioned(make(in_channels + context.features, out_channels, *args), context)


def _check(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} expects (B, {channels}, H, W) input, got shape {tuple(x.shape)}")


class SplitPrior(Bijector):
    """Glow's split with its learned prior (§3, "multi-scale architecture"; the code's ``split2d``
    and ``split2d_prior``), as a bijector.

    Input ``(B, C, H, W)``, C even. Glow keeps ``z1 = x[:, :C/2]`` and factors out
    ``z2 = x[:, C/2:]`` with the prior ``N(z2; μ(z1), σ(z1)²)``, where ``h = ZeroConv2d(z1)``
    (3×3, C channels, edge bias), ``μ = h[:, 0::2]``, ``log σ = h[:, 1::2]``. This layer maps

        ``x -> concat(ε, z1)``,  ``ε = (z2 − μ(z1)) · exp(−log σ(z1))``,  log-det ``−Σ log σ``,

    putting ε first so that :class:`~realnvp.bijectors.MultiScale` factors it out and passes
    ``z1`` on. Then ``log N(ε; 0, I) − Σ log σ = log N(z2; μ, σ²)``: the flow's standard-normal
    prior on the flat latent is exactly Glow's learned split prior (the same density, and the
    same samples: ε is the code's ``get_eps``, and sampling at temperature T scales ε as the
    code's ``eps_std`` does). ``μ = 0``, ``log σ = 0`` at the start (a standard normal; the layer
    is then a permutation of the two halves).
    """

    recomputable = True

    def __init__(self, channels: int, edge_bias: bool = True, context: ContextSlot | None = None):
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"SplitPrior needs an even number of channels, got {channels}")
        self.channels = channels
        self.net = _conditioned(ZeroConv2d, channels // 2, channels, context, 3, edge_bias)

    def prior(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of the factored half given the kept half ``z1``, each ``(B, C/2, H, W)``."""
        h = self.net(z1)
        h = h.to(z1.dtype)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check(x, self.channels, "SplitPrior")
        z1, z2 = x.chunk(2, dim=1)
        mean, logs = self.prior(z1)
        return torch.cat(((z2 - mean) * torch.exp(-logs), z1), dim=1), -sum_except_batch(logs)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        _check(y, self.channels, "SplitPrior")
        eps, z1 = y.chunk(2, dim=1)
        mean, logs = self.prior(z1)
        x = torch.cat((z1, torch.addcmul(mean, eps, torch.exp(logs))), dim=1)
        return x, (sum_except_batch(logs) if with_log_det else None)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class LearnedPrior(Bijector):
    """Glow's top prior (the code's ``prior``), as a bijector on the last level's output
    ``(B, C, H, W)``: ``z -> (z − μ) · exp(−log σ)``, log-det ``−Σ log σ``, so the flow's standard
    normal on the result is ``N(z; μ, σ²)``.

    As in the code, ``h = 0`` of shape ``(2C, H, W)``; with ``learn_top`` (``--learntop``)
    ``h = ZeroConv2d(h)`` (3×3, 2C channels, edge bias: the input is zero, so μ and log σ depend
    on the position only through the edge-padding channel, interior, edges and corners can differ,
    and on the layer's bias); with a context slot (``--ycond``) ``h += W c`` with ``W`` a
    zero-initialised linear map of the ``(B, k)`` context to ``2C`` values, the same at every
    position (the code's ``linear_zeros("y_emb", y_onehot, 2 * n_z)``). ``μ = h[:, :C]``,
    ``log σ = h[:, C:]``. Everything starts at 0 (a standard normal, the layer the identity)."""

    recomputable = True

    def __init__(self, channels: int, height: int, width: int, edge_bias: bool = True,
                 context: ContextSlot | None = None, learn_top: bool = True):
        super().__init__()
        if not learn_top and context is None:
            raise ValueError("LearnedPrior needs learn_top or a context: else it is N(0, I), no layer")
        self.channels, self.height, self.width = channels, height, width
        self.net = ZeroConv2d(2 * channels, 2 * channels, 3, edge_bias) if learn_top else None
        self.context = context
        self.embed = None
        if context is not None:
            self.embed = nn.Linear(context.features, 2 * channels)
            nn.init.zeros_(self.embed.weight)
            nn.init.zeros_(self.embed.bias)

    def prior(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` in ``like``'s dtype, each ``(1, C, H, W)``, or ``(B, C, 1, 1)`` plus
        that with a context (broadcast against ``(B, C, H, W)``)."""
        h = 0
        if self.net is not None:
            w = self.net.conv.weight
            h = self.net(w.new_zeros(1, 2 * self.channels, self.height, self.width))
        if self.embed is not None:
            c = self.context.read().to(self.embed.weight.dtype)
            h = h + self.embed(c)[:, :, None, None]
        h = h.to(like.dtype)
        return h[:, :self.channels], h[:, self.channels:]

    def _log_det(self, logs: Tensor, like: Tensor) -> Tensor:
        logs = logs.expand(-1, -1, self.height, self.width)
        return -sum_except_batch(logs).expand(like.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check(x, self.channels, "LearnedPrior")
        mean, logs = self.prior(x)
        return (x - mean) * torch.exp(-logs), self._log_det(logs, x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        _check(y, self.channels, "LearnedPrior")
        mean, logs = self.prior(y)
        return torch.addcmul(mean, y, torch.exp(logs)), (-self._log_det(logs, y) if with_log_det else None)

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.height}x{self.width}, learn_top={self.net is not None}, "
                f"conditional={self.embed is not None}")


class Shift(Bijector):
    """``y = x + offset`` elementwise; volume preserving (log-det 0). Glow centres its data with
    ``offset = −0.5`` (the code's ``preprocess``: ``x / n_bins − 0.5``, the ``1/n_bins`` being the
    dequantization's scaling, which :func:`~realnvp.bijectors.bits_per_dim` counts)."""

    recomputable = True

    def __init__(self, offset: float = -0.5):
        super().__init__()
        self.offset = float(offset)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + self.offset, zero_log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return y - self.offset, (zero_log_det(y) if with_log_det else None)

    def extra_repr(self) -> str:
        return f"offset={self.offset}"
