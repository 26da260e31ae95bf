"""Coupling layers (paper §3.2–3.4; NICE for the additive one).

Affine: ``y = b⊙x + (1−b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x))``, log-det ``Σ (1−b)⊙s``.
Inverse: ``x = b⊙y + (1−b)⊙((y − t(b⊙y))⊙exp(−s(b⊙y)))``.

One helper, :meth:`_Coupling._couple`, serves both directions; only the elementwise map differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijector, Sequential, sum_except_batch, zero_log_det
from .masks import Halves, Mask


def _per_channel(p: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) parameter to broadcast against a (B, C, ...) tensor of ``ndim`` dims
    (as is against (B, C): a reshape would be one more autograd node per coupling and step)."""
    return p if ndim == 2 else p.view(1, -1, *([1] * (ndim - 2)))


class _Coupling(Bijector):
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
        asked for. The inverse divides by the same ``exp(s)`` that the forward map multiplies
        by (rather than multiplying by ``exp(−s)``): one operation fewer, and a round trip
        rounds once less."""
        s, t = self.scale_and_shift(cond, a)
        if s is None:
            return (a - t if inverse else a + t), (zero_log_det(a) if with_log_det else None)
        a = (a - t) / torch.exp(s) if inverse else torch.addcmul(t, a, torch.exp(s))
        if not with_log_det:
            return a, None
        log_det = sum_except_batch(s)
        return a, (-log_det if inverse else log_det)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(y, inverse=True)

    def invert(self, y: Tensor) -> Tensor:
        return self._couple(y, inverse=True, with_log_det=False)[0]


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling with a tanh-bounded scale.

    ``net`` maps ``(B, mask.in_features, ...)`` to ``(B, 2 * mask.out_features, ...)``: the first
    half is the raw scale, the second the shift. The scale is ``s = rescale ⊙ tanh(raw)`` with a
    learned per-channel ``rescale`` initialised to one. The network's last layer is expected to
    start small (not zero), so the layer begins near the identity while every parameter, the
    rescaling included, receives a gradient from the first step; zeroing both the last layer and
    ``rescale`` would leave the scale branch without gradient for ever.
    """

    def __init__(self, mask: Mask, net: nn.Module):
        super().__init__(mask, net)
        self.rescale = nn.Parameter(torch.ones(mask.out_features))

    def _scale_and_shift(self, h: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        raw, t = h.chunk(2, dim=1)
        return _per_channel(self.rescale, ndim) * torch.tanh(raw), t


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

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(y, reversed(self.layers), inverse=True)

    def invert(self, y: Tensor) -> Tensor:
        return self._run(y, reversed(self.layers), inverse=True, with_log_det=False)[0]

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
