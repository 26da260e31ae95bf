"""Coupling layers (paper §3.2–3.4; NICE for the additive one).

Affine: ``y = b⊙x + (1−b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x))``, log-det ``Σ (1−b)⊙s``.
Inverse: ``x = b⊙y + (1−b)⊙((y − t(b⊙y))⊙exp(−s(b⊙y)))``.

One helper, :meth:`_Coupling._couple`, serves both directions; only the elementwise map differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijector, sum_except_batch, zero_log_det
from .masks import Mask


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

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        cond, a = self.mask.split(x)
        s, t = self.scale_and_shift(cond, x)
        if s is None:
            a = a - t if inverse else a + t
            log_det = zero_log_det(x)
        else:
            a = (a - t) * torch.exp(-s) if inverse else torch.addcmul(t, a, torch.exp(s))
            log_det = sum_except_batch(s)
            if inverse:
                log_det = -log_det
        return self.mask.merge(x, a, cond), log_det

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(y, inverse=True)


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
