"""Coupling layers (paper §3.2–3.4; NICE for the additive one).

Affine: ``y = b⊙x + (1−b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x))``, log-det ``Σ (1−b)⊙s``.
Inverse: ``x = b⊙y + (1−b)⊙((y − t(b⊙y))⊙exp(−s(b⊙y)))``.

The elementwise map is written once, in :meth:`_Coupling._elementwise`, for both directions;
the layer's forward and inverse, :class:`HalfCouplings` and memory-saving backprop's fused step
(:meth:`_Coupling.recompute_backward`) all go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from .base import Bijector, RecomputeResult, Sequential, sum_except_batch, zero_log_det
from .masks import Halves, Mask


def _per_channel(p: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) parameter to broadcast against a (B, C, ...) tensor of ``ndim`` dims
    (as is against (B, C): a reshape would be one more autograd node per coupling and step)."""
    return p if ndim == 2 else p.view(1, -1, *([1] * (ndim - 2)))


class _Coupling(Bijector):
    recomputable = True
    stores_activations = True

    def __init__(self, mask: Mask, net: nn.Module):
        super().__init__()
        self.mask = mask
        self.net = net

    def _scale_and_shift(self, h: Tensor, ndim: int) -> tuple[Tensor | None, Tensor]:
        raise NotImplementedError

    def scale_and_shift(self, cond: Tensor, like: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(s, t)`` for the conditioning input ``cond``, restricted to the transformed entries
        and in ``like``'s dtype (``s`` is ``None`` for an additive coupling).

        The affine map itself runs in the data's precision even when the network ran in a lower
        one under autocast: the network's output is cast back before the tanh, so exp(s), the
        log-det and everything downstream stay in float32 and only the network's arithmetic is
        cheap.
        """
        h = self.net(cond)
        if h.dtype != like.dtype:
            h = h.to(like.dtype)
        s, t = self._scale_and_shift(h, like.dim())
        return (None if s is None else self.mask.restrict(s)), self.mask.restrict(t)

    def _couple(self, x: Tensor, inverse: bool, with_log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        cond, a = self.mask.split(x)
        a, log_det = self.couple_parts(cond, a, inverse, with_log_det)
        return self.mask.merge(x, a, cond), log_det

    def couple_parts(self, cond: Tensor, a: Tensor, inverse: bool,
                     with_log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        """The map on the transformed part ``a`` given the conditioning part ``cond`` (as
        :meth:`Mask.split` returns them): ``(a', (B,) log-det)``, the log-det ``None`` if not
        asked for."""
        s, t = self.scale_and_shift(cond, a)
        return self._elementwise(a, s, t, inverse, with_log_det)

    @staticmethod
    def _elementwise(a: Tensor, s: Tensor | None, t: Tensor, inverse: bool,
                     with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        """The coupling's formula on the transformed part, given the network's ``s`` (``None``:
        additive) and ``t``: ``a·exp(s) + t`` forward, ``(a − t) / exp(s)`` inverse, with the
        ``(B,)`` log-det ``±Σ s`` (``None`` unless ``with_log_det``). The inverse divides by the
        same ``exp(s)`` that the forward map multiplies by (rather than multiplying by
        ``exp(−s)``): one operation fewer, and a round trip rounds once less."""
        if s is None:
            return (a - t if inverse else a + t), (zero_log_det(a) if with_log_det else None)
        a = (a - t) / torch.exp(s) if inverse else torch.addcmul(t, a, torch.exp(s))
        if not with_log_det:
            return a, None
        log_det = sum_except_batch(s)
        return a, (-log_det if inverse else log_det)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._couple(y, inverse=True, with_log_det=with_log_det)

    def recompute_backward(self, y: Tensor, g_y: Tensor, g_ld: Tensor, *, params: list[Tensor],
                           freeze: Callable[[], AbstractContextManager[None]], state: object | None,
                           need_x_grad: bool) -> RecomputeResult:
        """:meth:`Bijector.recompute_backward` with one evaluation of the s/t network for the
        inverse and the re-run: the network's input ``condition(x)`` equals ``condition(y)`` bit
        for bit (the conditioning part passes through unchanged), so the network runs once, with
        autograd on, on ``condition(y)``; its ``s`` and ``t`` give ``x`` through the inverse
        formula (no graph) and then ``y`` again through the forward formula (graph), and one
        :func:`torch.autograd.grad` call gives every gradient. ``state`` is unused: batch norms
        inside the network use the statistics of the recomputed batch."""
        mask = self.mask
        with torch.enable_grad():
            cond = mask.condition(y).detach().requires_grad_(need_x_grad)
            with freeze():
                s, t = self.scale_and_shift(cond, y)
            with torch.no_grad():
                x = mask.merge(y, self._elementwise(mask.active(y), s, t, True, False)[0])
            x_leaf = x.detach().requires_grad_(need_x_grad)
            a_y, log_det = self._elementwise(mask.active(x_leaf), s, t, False, True)
            outs, grads = [mask.merge(x_leaf, a_y)], [g_y]
            if log_det.requires_grad:  # an additive coupling's zero log-det has no graph
                outs.append(log_det)
                grads.append(g_ld.to(log_det.dtype))
            inputs = ([x_leaf, cond] if need_x_grad else []) + params
            res = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
        if not need_x_grad:
            return x.detach(), None, res
        g_x, g_cond = res[0], res[1]
        if g_cond is not None:  # the gradient that reached x through the network's input
            with torch.enable_grad():
                x2 = x.detach().requires_grad_(True)
                (g_through_cond,) = torch.autograd.grad(mask.condition(x2), x2, g_cond)
            g_x = g_through_cond if g_x is None else g_x + g_through_cond
        return x.detach(), g_x, res[2:]


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling with a tanh-bounded scale.

    ``net`` maps ``(B, mask.in_features, ...)`` to ``(B, 2 * mask.out_features, ...)``: the first
    half is the raw scale, the second the shift. The scale is ``s = rescale · tanh(raw)`` with a
    learned ``rescale``: one scalar per coupling, as in the authors' code (``rescaling_scale`` in
    ``masked_conv_aff_coupling``, ``scale`` in ``conv_ch_aff_coupling``), or one per channel with
    ``per_channel_rescale=True``. It starts at ``rescale_init``; the authors start it at 0 in
    their checkerboard couplings and at 1 in their channel-wise ones (what
    :class:`~realnvp.RealNVP` does). ``penalize_rescale``: whether the L2 penalty covers it (the
    authors' code penalises the checkerboard couplings' ``rescaling_scale`` only).

    The network's last layer is expected to start small (not zero): zeroing both it and
    ``rescale`` would leave the scale branch without gradient for ever. With a small last layer
    and ``rescale`` at 0 the layer starts with ``s = 0`` and ``rescale`` gets a gradient from the
    first step (through ``tanh(raw) ≠ 0``), the rest of the scale branch as soon as it moves.
    """

    def __init__(self, mask: Mask, net: nn.Module, rescale_init: float = 1.0,
                 per_channel_rescale: bool = False, penalize_rescale: bool = True):
        super().__init__(mask, net)
        shape = (mask.out_features,) if per_channel_rescale else ()
        self.rescale = nn.Parameter(torch.full(shape, float(rescale_init)))
        self.penalize_rescale = bool(penalize_rescale)

    def penalized_parameters(self) -> list[nn.Parameter]:
        """The scale factor ``rescale`` unless ``penalize_rescale=False``: the paper's L2
        penalty covers it (with the weight-norm magnitudes of the network, which the network's
        own layers name)."""
        return [self.rescale] if self.penalize_rescale else []

    def _scale_and_shift(self, h: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        raw, t = h.chunk(2, dim=1)
        rescale = self.rescale if self.rescale.dim() == 0 else _per_channel(self.rescale, ndim)
        return rescale * torch.tanh(raw), t

    def extra_repr(self) -> str:
        return f"rescale={tuple(self.rescale.shape) or 'scalar'}, penalize_rescale={self.penalize_rescale}"


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling ``y = b⊙x + (1−b)⊙(x + t(b⊙x))``; volume preserving (log-det 0).

    ``net`` maps ``(B, mask.in_features, ...)`` to ``(B, mask.out_features, ...)``.
    """

    def _scale_and_shift(self, h: Tensor, ndim: int) -> tuple[None, Tensor]:
        return None, h


class HalfCouplings(Sequential):
    """A chain of couplings that all split dimension 1 at the same point (:class:`Halves` masks,
    alternating or not), run on the two halves without concatenating them between layers.

    The same map, log-det and parameters (the same ``state_dict`` keys) as
    ``Sequential(*couplings)``, with one split and one concatenation per chain instead of one
    per coupling: for small vector flows, whose time follows the number of operations, that is
    two operations forward and two backward fewer per coupling. With ``memory_saving`` on, the
    chain runs layer by layer as :class:`Sequential` does.
    """

    def __init__(self, *couplings: _Coupling):
        super().__init__(*couplings)
        if not couplings:
            raise ValueError("HalfCouplings needs at least one coupling")
        first = _halves_split(couplings[0])
        for c in couplings:
            if first is None or _halves_split(c) != first:
                raise ValueError(
                    "HalfCouplings takes couplings with Halves masks that all split the same "
                    f"number of features at the same point; got {c!r:.200}"
                )
        self.k = first[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            return super().forward(x)
        return self._run(x, self.layers, inverse=False)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._run(y, reversed(self.layers), inverse=True, with_log_det=with_log_det)

    def _run(self, x: Tensor, couplings, inverse: bool,
             with_log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        first, second = torch.split(x, (self.k, x.shape[1] - self.k), dim=1)
        total = None
        for c in couplings:
            if c.mask.flip:
                first, log_det = c.couple_parts(second, first, inverse, with_log_det)
            else:
                second, log_det = c.couple_parts(first, second, inverse, with_log_det)
            if with_log_det:
                total = log_det if total is None else total + log_det
        return torch.cat((first, second), dim=1), total


def _halves_split(layer: Bijector) -> tuple[int, int] | None:
    """``(k, features)`` of a coupling with a :class:`Halves` mask; ``None`` for anything else."""
    mask = getattr(layer, "mask", None) if isinstance(layer, _Coupling) else None
    return (mask.k, mask.in_features + mask.out_features) if isinstance(mask, Halves) else None
