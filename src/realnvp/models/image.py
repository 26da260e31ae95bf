"""The image RealNVP of the paper (§3.6, §4.1, App. E)."""

from __future__ import annotations

from ..bijectors import (
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Bijector,
    ChannelPermutation,
    Checkerboard,
    Halves,
    Logit,
    Mask,
    MultiScale,
    Sequential,
    Squeeze,
    checkerboard_colour_order,
)
from ..nets import ResNet
from ..nets.context import ContextSlot, placeholder
from .flow import Flow

COUPLINGS = {"affine": AffineCoupling, "additive": AdditiveCoupling}
#: what leaves the flow after each scale but the last (see :class:`RealNVP`)
FACTOR_OUTS = ("checkerboard", "channels")


def _logit_domain(alpha: float) -> tuple[float, float]:
    """Inputs y for which ``alpha + (1 - 2 alpha) y`` lies in [0, 1]: the data [0, 1] plus the
    margin into which samples of the model may fall."""
    margin = alpha / (1 - 2 * alpha)
    return -margin, 1 + margin


class RealNVP(Flow):
    """Multi-scale RealNVP for images ``(B, C, H, W)`` with values in ``[0, 1]``.

    Each scale but the last: 3 couplings with alternating checkerboard masks, a squeeze, 3
    couplings with alternating channel-wise masks, then half of the units are factored out.
    The last scale: 4 checkerboard couplings. The s/t ResNets have ``hidden_channels`` feature
    maps at the first scale and double with every squeeze. With ``batch_norm`` a
    :class:`~realnvp.bijectors.BatchNorm` follows every coupling (its log-det counted).

    ``factor_out="checkerboard"`` (the authors' code, ``squeeze_2x2_ordered`` in
    ``rec_masked_conv_coupling``): the factored half is one checkerboard colour (i + j odd) of
    the scale's output at the scale's resolution, all channels; the even colour continues, as
    ``(2C, H/2, W/2)`` with offset (0, 0) of every 2×2 block in its first C channels and (1, 1)
    in the last C. ``"channels"``: the first half of the squeezed channels is factored out (for
    RGB: all of R and half of G) and the second half continues.

    The s/t networks and scales are set up as in the authors' code (see :func:`_coupling` and
    :mod:`realnvp.nets.resnet`).

    The input is expected to be dequantized data scaled to ``[0, 1]`` (see
    :class:`~realnvp.bijectors.Dequantize`); the first layer is the logit transform with
    ``logit_alpha`` (``None`` removes it; the input is then unconstrained).

    The paper's CIFAR-10 model: ``RealNVP((3, 32, 32), num_scales=2, hidden_channels=64,
    num_blocks=8)``; its 32×32 ImageNet and 64×64 models use 4 blocks with 32 maps (64×64: 2
    blocks) and as many scales as it takes to reach 4×4.

    ``context_features=k > 0``: the conditional flow ``p(x | c)`` (class-conditional with a
    one-hot label, :func:`realnvp.nets.context.one_hot`): the ``(B, k)`` context reaches every
    s/t network as ``k`` constant input channels.

    ``memory_saving=True`` trains with memory-saving backpropagation through the exact inverse
    (see :meth:`~realnvp.Flow.memory_saving_`); it is a training mode, not part of the model.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_scales: int = 2,
        hidden_channels: int = 64,
        num_blocks: int = 8,
        coupling: str = "affine",
        batch_norm: bool = True,
        logit_alpha: float | None = 0.05,
        bn_momentum: float = 0.1,
        validate_args: bool = True,
        memory_saving: bool = False,
        factor_out: str = "checkerboard",
        context_features: int = 0,
        dropout: float = 0.0,
    ):
        _, h, w = in_shape
        if factor_out not in FACTOR_OUTS:
            raise ValueError(f"factor_out must be one of {FACTOR_OUTS}, got {factor_out!r}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {sorted(COUPLINGS)}, got {coupling!r}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        f = 2 ** (num_scales - 1)
        if h % f or w % f or h // f < 2 or w // f < 1:
            raise ValueError(
                f"input {h}x{w} cannot be squeezed {num_scales - 1} times "
                f"(H and W must be divisible by {f} and leave at least 2x2 at the last scale)"
            )
        slot = ContextSlot(context_features) if context_features else None
        stages = _stages(in_shape, num_scales, hidden_channels, num_blocks, coupling, batch_norm,
                         bn_momentum, factor_out, slot, dropout)
        with placeholder(slot):  # MultiScale probes each stage's output shape with one example
            body = MultiScale(stages, in_shape)
        bijector = body if logit_alpha is None else Sequential(Logit(logit_alpha), body)
        super().__init__(
            bijector,
            event_shape=in_shape,
            support=None if logit_alpha is None else _logit_domain(logit_alpha),
            validate_args=validate_args,
            context=slot,
        )
        self.config = dict(
            in_shape=tuple(in_shape), num_scales=num_scales, hidden_channels=hidden_channels,
            num_blocks=num_blocks, coupling=coupling, batch_norm=batch_norm,
            logit_alpha=logit_alpha, bn_momentum=bn_momentum, factor_out=factor_out,
            context_features=context_features, dropout=dropout,
        )
        if memory_saving:
            self.memory_saving_(True)


def _stages(in_shape: tuple[int, int, int], num_scales: int, hidden_channels: int, num_blocks: int,
            coupling: str, batch_norm: bool, bn_momentum: float,
            factor_out: str = "checkerboard", context: ContextSlot | None = None,
            dropout: float = 0.0) -> list[Bijector]:
    """One :class:`Sequential` per scale (see :class:`RealNVP`), built layer by layer in order
    (the order in which the initial weights are drawn). Stage k acts on ``(C_k, H_k, W_k)``:
    ``(C_0, H_0, W_0) = in_shape``; a squeeze makes it ``(4C, H/2, W/2)`` and the s/t networks
    twice as wide; with ``factor_out="checkerboard"`` a channel permutation then puts the
    factored colour first, and the factor-out halves the channels."""
    def layer(mask: Mask, channels: int, hidden: int) -> list[Bijector]:
        """A coupling on ``channels`` channels, then (optionally) batch norm on its output."""
        layers = [_coupling(coupling, mask, hidden, num_blocks, batch_norm, context, dropout)]
        if batch_norm:
            layers.append(BatchNorm(channels, momentum=bn_momentum))
        return layers

    stages: list[Bijector] = []
    (c_now, h_now, w_now), hidden = in_shape, hidden_channels
    for k in range(num_scales):
        last = k == num_scales - 1
        layers: list[Bijector] = []
        for i in range(4 if last else 3):
            layers += layer(Checkerboard(c_now, h_now, w_now, parity=i % 2), c_now, hidden)
        if not last:
            layers.append(Squeeze())
            c_in, c_now, h_now, w_now, hidden = c_now, 4 * c_now, h_now // 2, w_now // 2, 2 * hidden
            for i in range(3):
                layers += layer(Halves(c_now, flip=bool(i % 2)), c_now, hidden)
            if factor_out == "checkerboard":
                layers.append(ChannelPermutation(checkerboard_colour_order(c_in)))
            c_now //= 2
        stages.append(Sequential(*layers))
    return stages


def _coupling(kind: str, mask: Mask, hidden: int, num_blocks: int, batch_norm: bool,
              context: ContextSlot | None = None, dropout: float = 0.0) -> Bijector:
    """One coupling with its s/t ResNet, set up as in the authors' code: a checkerboard
    coupling's network sees ``2·bn(b⊙x)`` and the mask ``b`` as an extra channel, and its scalar
    ``rescale`` starts at 0 and is L2-penalised (``rescaling_scale``); a channel-wise coupling's
    network sees ``bn(x_cond)``, its ``rescale`` starts at 1 and is not penalised (``scale``)."""
    checker = isinstance(mask, Checkerboard)
    affine = kind == "affine"
    out = mask.out_features * (2 if affine else 1)
    net = ResNet(mask.in_features, out, hidden=hidden, num_blocks=num_blocks,
                 out_bias=affine or not batch_norm, mask=mask.b if checker else None,
                 in_gain=2.0 if checker else 1.0, context=context, dropout=dropout)
    if not affine:
        return COUPLINGS[kind](mask, net)
    return AffineCoupling(mask, net, rescale_init=0.0 if checker else 1.0, penalize_rescale=checker)
