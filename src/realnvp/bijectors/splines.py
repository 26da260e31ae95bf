"""Monotone rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, 2019, "Neural
Spline Flows", §3.1 and App. A) and a coupling layer built on them.

On ``[−B, B]`` the spline has ``K`` bins with knots ``(x⁽ᵏ⁾, y⁽ᵏ⁾)``, ``k = 0..K``, from
``(−B, −B)`` to ``(B, B)``, and positive derivatives ``δ⁽ᵏ⁾`` at the knots, ``δ⁽⁰⁾ = δ⁽ᴷ⁾ = 1``.
Outside ``[−B, B]`` it is the identity, so the map is continuous in value and slope everywhere.
In bin ``k``, with ``w = x⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾``, ``h = y⁽ᵏ⁺¹⁾ − y⁽ᵏ⁾``, ``s = h / w``, ``ξ = (x − x⁽ᵏ⁾) / w``:

- eq. 4:  ``y = y⁽ᵏ⁾ + h [s ξ² + δ⁽ᵏ⁾ ξ(1−ξ)] / [s + (δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s) ξ(1−ξ)]``
- eq. 5:  ``dy/dx = s² [δ⁽ᵏ⁺¹⁾ ξ² + 2s ξ(1−ξ) + δ⁽ᵏ⁾ (1−ξ)²] / [s + (δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s) ξ(1−ξ)]²``
- App. A (inverse): ``ξ`` is the root in ``[0, 1]`` of ``a ξ² + b ξ + c = 0`` with
  ``a = h (s − δ⁽ᵏ⁾) + (y − y⁽ᵏ⁾) (δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s)``,
  ``b = h δ⁽ᵏ⁾ − (y − y⁽ᵏ⁾) (δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s)``, ``c = −s (y − y⁽ᵏ⁾)``,
  taken as ``ξ = 2c / (−b − √(b² − 4ac))``, which does not cancel (``c ≤ 0``, ``b > 0`` near the
  root) where the textbook formula would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Bijector, sum_except_batch
from .masks import Mask

_LOG2 = math.log(2.0)


def spline_knots(raw: Tensor, bound: float, min_bin: float) -> Tensor:
    """``(..., K) -> (..., K + 1)``: the knot positions on ``[−bound, bound]`` for unnormalised
    bin sizes ``raw``: sizes ``min_bin + (1 − K·min_bin)·softmax(raw)`` of the interval's
    length, the end knots exactly ``±bound``."""
    k = raw.shape[-1]
    if min_bin * k >= 1:
        raise ValueError(f"min_bin={min_bin} leaves no room for {k} bins (needs min_bin * bins < 1)")
    sizes = min_bin + (1 - min_bin * k) * torch.softmax(raw, dim=-1)
    # the interior knots from the running sum; the end knots set to ±bound exactly (the sum's
    # last entry is 1 only up to round-off)
    interior = 2 * bound * torch.cumsum(sizes[..., :-1], dim=-1) - bound
    return F.pad(F.pad(interior, (1, 0), value=-bound), (0, 1), value=bound)


def spline_derivatives(raw: Tensor, min_derivative: float) -> Tensor:
    """``(..., K − 1) -> (..., K + 1)``: the knot derivatives, ``1`` at both ends and
    ``min_derivative + (1 − min_derivative)·softplus(raw)/ln 2`` inside (``1`` at ``raw = 0``, so
    all-zero parameters give the identity)."""
    if not 0 <= min_derivative < 1:
        raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative}")
    # softplus of a strided slice (the derivatives' columns of a net's output) takes a slow
    # path on the CPU, ~4x a contiguous copy and softplus together on (256, 1, 15)
    inner = min_derivative + (1 - min_derivative) * F.softplus(raw.contiguous()) / _LOG2
    return F.pad(inner, (1, 1), value=1.0)


def rational_quadratic(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    bound: float = 5.0,
    min_bin: float = 1e-3,
    min_derivative: float = 1e-3,
    with_log_det: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The spline (``inverse=False``) or its inverse, elementwise, with identity tails.

    Args:
        x: the points, any shape ``S``.
        widths, heights: unnormalised bin sizes, shape ``S + (K,)`` (see :func:`spline_knots`).
        derivatives: unnormalised interior knot derivatives, shape ``S + (K − 1,)`` (see
            :func:`spline_derivatives`; the two end derivatives are 1).
        inverse: evaluate the inverse map (App. A) instead.
        bound: B, the spline covers ``[−B, B]`` in both coordinates.
        min_bin: the smallest bin width and height, as a fraction of ``2B``.
        min_derivative: the smallest knot derivative.
        with_log_det: compute the log-derivative (``False``: ``None``, for sampling).

    Returns:
        ``(y, log|dy/dx|)``, both of shape ``S``: the log-derivative of the map evaluated (for
        the inverse, ``−log`` of the forward derivative at the returned point). ``0`` in the tails.
    """
    k = widths.shape[-1]
    if heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            f"a {k}-bin spline needs {k} widths, {k} heights and {k - 1} derivatives, got "
            f"{widths.shape[-1]}, {heights.shape[-1]}, {derivatives.shape[-1]}"
        )
    if not bound > 0:
        raise ValueError(f"the spline's bound must be positive, got {bound}")
    xs = spline_knots(widths, bound, min_bin)
    ys = spline_knots(heights, bound, min_bin)
    ds = spline_derivatives(derivatives, min_derivative)

    inside = (x >= -bound) & (x <= bound)
    t = x.clamp(-bound, bound)  # out-of-range points computed on the edge, then discarded
    # the bin: how many interior knots lie at or below t (a point exactly at +B is in the last)
    edges = (ys if inverse else xs)[..., 1:k].detach()
    b = (t.unsqueeze(-1) >= edges).sum(dim=-1, keepdim=True)
    ends = torch.cat((b, b + 1), dim=-1)  # both ends of the bin: one gather per knot quantity
    x0, x1 = xs.gather(-1, ends).unbind(-1)
    y0, y1 = ys.gather(-1, ends).unbind(-1)
    d0, d1 = ds.gather(-1, ends).unbind(-1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    excess = d1 + d0 - 2 * s  # δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s
    if inverse:
        dy = t - y0
        a = h * (s - d0) + dy * excess
        bq = h * d0 - dy * excess
        c = -s * dy
        disc = (bq.pow(2) - 4 * a * c).clamp(min=0)
        xi = (2 * c / (-bq - disc.sqrt())).clamp(0, 1)
        out = x0 + xi * w
        xi1 = xi * (1 - xi)
        denom = s + excess * xi1
    else:
        xi = ((t - x0) / w).clamp(0, 1)
        xi1 = xi * (1 - xi)
        denom = s + excess * xi1
        out = y0 + h * (s * xi.pow(2) + d0 * xi1) / denom
    y = torch.where(inside, out, x)
    if not with_log_det:
        return y, None
    # eq. 5 as one logarithm: s, the numerator and the denominator are bounded away from 0 and
    # infinity by min_bin and min_derivative, so the product neither under- nor overflows
    num = d1 * xi.pow(2) + 2 * s * xi1 + d0 * (1 - xi).pow(2)
    log_deriv = torch.log(s.pow(2) * num / denom.pow(2))
    if inverse:
        log_deriv = -log_deriv
    return y, torch.where(inside, log_deriv, torch.zeros_like(log_deriv))


class SplineCoupling(Bijector):
    """A coupling whose transformed part goes through a rational-quadratic spline (NSF §3.2)
    whose parameters come from the conditioning part.

    ``net`` maps ``(B, mask.in_features, ...)`` to ``(B, mask.out_features · (3K − 1), ...)``: for
    transformed channel ``c`` the ``3K − 1`` entries ``c·(3K − 1) ... (c + 1)·(3K − 1) − 1`` are
    its K widths, K heights and K − 1 interior derivatives (see :func:`rational_quadratic`).
    With a :class:`~realnvp.bijectors.Checkerboard` mask the conditioning squares pass through
    unchanged, bit for bit.

    Data → latent: ``y_active = RQS(x_active; θ(x_cond))``, log-det ``Σ log RQS′``.
    """

    recomputable = True
    stores_activations = True

    def __init__(self, mask: Mask, net: torch.nn.Module, bins: int = 8, bound: float = 5.0,
                 min_bin: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__()
        if bins < 1:
            raise ValueError(f"a spline needs at least one bin, got bins={bins}")
        self.mask, self.net = mask, net
        self.bins, self.bound = int(bins), float(bound)
        self.min_bin, self.min_derivative = float(min_bin), float(min_derivative)
        # Checkerboard-like masks transform the full tensor and keep some entries: restrict marks them
        self._partial = type(mask).restrict is not Mask.restrict

    @property
    def params_per_feature(self) -> int:
        return 3 * self.bins - 1

    def _couple(self, x: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        cond, a = self.mask.split(x)
        h = self.net(cond)
        if h.dtype != a.dtype:
            h = h.to(a.dtype)
        p = self.params_per_feature
        if h.shape[1] != a.shape[1] * p:
            raise ValueError(
                f"SplineCoupling's net must emit {a.shape[1]} x {p} = {a.shape[1] * p} channels "
                f"({self.bins} bins), got {h.shape[1]}"
            )
        h = h.view(h.shape[0], a.shape[1], p, *h.shape[2:]).movedim(2, -1)
        k = self.bins
        y, ld = rational_quadratic(a, h[..., :k], h[..., k:2 * k], h[..., 2 * k:], inverse,
                                   self.bound, self.min_bin, self.min_derivative, with_log_det)
        if self._partial:
            keep = self.mask.restrict(torch.ones_like(a[:1])) == 0
            y = torch.where(keep, a, y)
            ld = None if ld is None else self.mask.restrict(ld)
        out = self.mask.merge(x, y, cond)
        return out, (sum_except_batch(ld) if with_log_det else None)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, False, True)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._couple(y, True, with_log_det)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}"
