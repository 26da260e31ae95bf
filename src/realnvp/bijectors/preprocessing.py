"""From discrete data to a density on R^D: dequantization and the logit transform (paper §4.1).

The pipeline for K-level data ``x ∈ {0, …, K−1}^D`` is

1. :class:`Dequantize`: ``y = (x + u) / K`` with ``u ~ U[0, 1)^D``, so ``y ∈ [0, 1)^D``;
2. :class:`Logit`: ``z = logit(α + (1 − 2α)·y)`` with α = 0.05 by default.

The paper's text writes ``α + (1 − α)·y``; the authors' code uses ``α + (1 − 2α)·y``, which keeps
the argument of the logit symmetric in [α, 1 − α]. We follow the code. Every Jacobian is counted,
so :func:`bits_per_dim` gives numbers comparable with the paper's Table 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Bijector, sum_except_batch


def bits_per_dim(log_prob: Tensor, num_dims: int, num_levels: int | None = 256) -> Tensor:
    """Bits per dimension of K-level discrete data from a continuous log-density.

    ``bpd = (−log p(y) + D·ln K) / (D·ln 2)`` where ``log p(y)`` (nats, shape (B,)) is the density
    of the dequantized data ``y = (x + u)/K`` in ``[0, 1)^D``, every preprocessing Jacobian
    included. Averaged over the dequantization noise this is an upper bound on the discrete
    model's bits/dim. With ``num_levels=None`` (continuous data) it is ``−log p / (D ln 2)``.
    """
    nll = -log_prob
    if num_levels is not None:
        nll = nll + num_dims * math.log(num_levels)
    return nll / (num_dims * math.log(2.0))


def shard_noise(draw, like: Tensor, shard: tuple[int, int] = (0, 1)) -> Tensor:
    """Noise of ``like``'s shape, dtype and device from ``draw`` (``torch.rand``, ``torch.randn``)
    for a batch that holds rows ``rank::world`` of a global batch of ``B·world`` rows (as a
    distributed sampler deals them out to ``world`` processes, ``B`` rows each).

    The noise is drawn for the whole global batch and rows ``rank::world`` are kept: every
    process count gives each example the same noise from the same seed, and the RNG moves on by
    a global batch on every process. ``world = 1`` (the default) draws ``like``'s shape, the
    same stream.
    """
    rank, world = shard
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    shape = (like.shape[0] * world, *like.shape[1:])
    u = draw(shape, dtype=like.dtype, device=like.device)
    return u if world == 1 else u[rank::world]


class Dequantize(Bijector):
    """Uniform dequantization ``y = (x + u) / K`` of integer data in ``[0, K−1]``.

    Forward adds fresh uniform noise from the global torch RNG and returns the log-det of the
    scaling, ``−D·ln K``, so that ``model.log_prob(y) + log_det`` is a (noisy) lower bound on
    ``log P(x)`` in nats. The inverse ``x = floor(K·y)`` recovers the integers exactly.

    With ``validate_args`` (the default) the input must hold integers in ``[0, K−1]``: anything
    else (out-of-range levels, data that is already dequantized, NaN) is a ``ValueError`` rather
    than a silently wrong likelihood. ``y`` stays in its bin ``[x/K, (x+1)/K)`` (so below 1) even
    where floating-point rounding would put it on a bin edge, and the inverse is exact.
    """

    def __init__(self, num_levels: int = 256, validate_args: bool = True):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.num_levels = num_levels
        self.validate_args = validate_args

    def _check(self, x: Tensor) -> None:
        k = self.num_levels
        if not bool(((x < 0) | (x > k - 1) | (x != torch.floor(x)) | x.isnan()).any()):
            return  # the common case costs one reduction (and one device sync)
        expected = f"Dequantize expects integer levels in [0, {k - 1}]"
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{expected}, got NaN or infinite values")
        if bool((x != torch.floor(x)).any()):
            raise ValueError(f"{expected}, got non-integer values (is the data already dequantized?)")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > k - 1:
            raise ValueError(f"{expected}, got values in [{lo:g}, {hi:g}]")

    def _log_det(self, x: Tensor) -> Tensor:
        d = x[0].numel()
        dtype = torch.promote_types(x.dtype, torch.float32)
        return torch.full((x.shape[0],), -d * math.log(self.num_levels), dtype=dtype, device=x.device)

    def forward(self, x: Tensor, shard: tuple[int, int] = (0, 1),
                noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, ...)`` integer levels (any dtype; non-float input becomes float32) ->
        ``(y, log_det)``: ``y`` of ``x``'s shape in ``[0, 1)``, ``log_det`` ``(B,)`` nats, ``−D ln K``
        per example with ``D = x[0].numel()``.

        ``noise``: the offsets ``u ∈ [0, 1)`` of ``x``'s shape, drawn by the caller (a learned
        dequantizer's, :mod:`realnvp.models.dequantization`); ``None`` draws them uniformly from
        the global RNG with :func:`shard_noise` (``shard = (rank, world)``: see there). The input
        check and the bin-edge correction apply either way.
        """
        x = x if x.is_floating_point() else x.float()
        if self.validate_args and x.numel():
            self._check(x)
        u = noise if noise is not None else shard_noise(torch.rand, x, shard)
        return self._in_bins((x + u.to(x.dtype)) / self.num_levels, x), self._log_det(x)

    def _in_bins(self, y: Tensor, x: Tensor) -> Tensor:
        """``y ≈ (x + u)/K`` moved into its bin ``[x/K, (x+1)/K)`` where rounding left it out.

        Rounding can put y on the edge of the next bin (x + u rounds up to x + 1 for u close to 1:
        y = 1 for x = K − 1) or just below its own; nudge those few values back by an ulp or two,
        so that y < 1 and floor(K·y) = x always (two passes suffice for K ≤ 65536)."""
        k = self.num_levels
        eps = torch.finfo(y.dtype).eps
        for _ in range(2):
            level = torch.floor(y * k)
            y = torch.where(level > x, y * (1 - eps), torch.where(level < x, y * (1 + eps), y))
        return y

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor]:
        x = torch.floor(y * self.num_levels).clamp_(0, self.num_levels - 1)
        return x, -self._log_det(y)  # free: a constant


class Logit(Bijector):
    """``z = logit(α + (1 − 2α)·y)`` for ``y ∈ [0, 1]^D``, with its exact log-det.

    ``log|dz/dy| = Σ [log(1 − 2α) − log p − log(1 − p)]`` with ``p = α + (1 − 2α)·y``.
    """

    recomputable = True

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def _log_det(self, log_p: Tensor, log_1mp: Tensor) -> Tensor:
        return sum_except_batch(math.log1p(-2 * self.alpha) - log_p - log_1mp)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * y
        # At the very ends of the domain (p = 0 or 1: y = 0 or 1 with alpha = 0, or the edges of
        # the sampling margin) the logit is infinite and inf − inf would make log p(y) NaN; keep
        # p inside (0, 1) so that such inputs get a finite (very low) log-density instead.
        finfo = torch.finfo(p.dtype)
        p = p.clamp(finfo.tiny, 1 - finfo.eps / 2)
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        return log_p - log_1mp, self._log_det(log_p, log_1mp)

    def _inverse(self, z: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        y = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        if not with_log_det:
            return y, None
        # log p and log(1 − p) straight from z, stable for large |z|.
        log_p, log_1mp = -F.softplus(-z), -F.softplus(z)
        return y, -self._log_det(log_p, log_1mp)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
