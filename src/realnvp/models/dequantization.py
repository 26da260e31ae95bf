"""Dequantizers: the distribution ``q(u | x)`` of the offsets that take K-level data into bins.

For integer data ``x ∈ {0, …, K−1}^D`` and any density ``p`` on ``[0, 1)^D``,

    ``log P(x) ≥ E_{u ~ q(u|x)} [ log p((x + u)/K) − D ln K − log q(u | x) ]``

(Jensen; Flow++, Ho et al. 2019, §3.1), with equality when ``q(u|x)`` is the model's own
density restricted to ``x``'s bin. Both dequantizers here have one interface,
``sample_and_log_prob(x, shard) -> (u, log q(u|x))``:

- :class:`UniformDequantizer`: ``q = U[0, 1)^D``, ``log q = 0``; the bound the RealNVP paper
  reports (its §4.1).
- :class:`VariationalDequantizer`: ``u = sigmoid(g(ε; x))``, ``ε ~ N(0, I)``, with ``g`` a
  flow of coupling layers conditioned on a shallow convolutional network of ``x``, trained
  jointly with the model (Flow++'s variational dequantization, its §3.1).

The model's input is then ``y = (x + u)/K`` (:class:`~realnvp.bijectors.Dequantize`), and the
bound per example is ``log p(y) − D ln K − log q(u|x)`` in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bijectors import AffineCoupling, Checkerboard, ElementwiseAffine, Sequential, Unmasked
from ..bijectors.glow import ActNormConv2d, GlowNet
from ..bijectors.preprocessing import shard_noise
from ..nets.context import Conditioned, ContextSlot
from .flow import standard_normal_log_prob

#: ``g`` starts as ``z = 1.75·ε``: ``sigmoid(1.75·ε)`` is the logit-normal closest to U[0, 1)
#: in entropy (−0.010 nats per dimension, against −0.19 for ``sigmoid(ε)``), so the learned
#: dequantizer starts at very nearly the uniform bound
INIT_SCALE = 1.75


def _levels_to_net(x: Tensor, num_levels: int) -> Tensor:
    """Integer levels to the conditioning network's input, centred in ``[−0.5, 0.5]``."""
    return x / (num_levels - 1) - 0.5


class UniformDequantizer(nn.Module):
    """``q(u|x) = U[0, 1)^D``: ``u`` from the global RNG (:func:`shard_noise`), ``log q = 0``.
    No parameters."""

    def __init__(self, num_levels: int):
        super().__init__()
        self.num_levels = int(num_levels)

    def sample_and_log_prob(self, x: Tensor, shard: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, ...)`` levels -> ``(u, log q)``: ``u`` of ``x``'s shape in ``[0, 1)``, the
        ``(B,)`` log-density, zero."""
        x = x if x.is_floating_point() else x.float()
        u = shard_noise(torch.rand, x, shard)
        return u, x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))

    forward = sample_and_log_prob


class VariationalDequantizer(nn.Module):
    """Flow++'s learned dequantizer for ``(C, H, W)`` images of ``num_levels`` levels.

    ``h = features(x)``, a shallow conv net of the image (two 3×3 convolutions with actnorm,
    ``feature_channels`` maps); ``ε ~ N(0, I)`` of the image's shape; ``z = g(ε; h)``;
    ``u = sigmoid(z)``. ``g`` is, in order: a learned elementwise scale and shift (starting at
    ``z = 1.75·ε``, see :data:`INIT_SCALE`), an affine map of every entry whose scale and shift
    come from ``h`` alone (:class:`~realnvp.bijectors.Unmasked`), then ``num_steps`` checkerboard
    affine couplings (alternating parity) whose networks (:class:`~realnvp.bijectors.glow.GlowNet`,
    ``hidden_channels`` wide, last layer zero so each starts as the identity) see the kept half of
    ``z`` and ``h``. Images of one pixel get no checkerboard couplings.

    ``log q(u|x) = log N(ε; 0, I) − log|det ∂z/∂ε| − Σ log sigmoid'(z)``, with
    ``log sigmoid'(z) = −softplus(−z) − softplus(z)`` computed from ``z`` (exact where ``u``
    itself rounds to 0 or 1). ``u`` is kept below 1 (the largest float below one) so that
    ``(x + u)/K`` stays in ``x``'s bin.
    """

    def __init__(self, shape: tuple[int, int, int], num_levels: int, num_steps: int = 4,
                 hidden_channels: int = 32, feature_channels: int = 16):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"a variational dequantizer takes (C, H, W) images, got shape {shape}")
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        c, h, w = shape
        self.shape, self.num_levels = tuple(shape), int(num_levels)
        self.slot = ContextSlot(feature_channels)
        self.features = nn.Sequential(
            ActNormConv2d(c, hidden_channels, 3), nn.ReLU(),
            ActNormConv2d(hidden_channels, feature_channels, 3),
        )
        scale = ElementwiseAffine(self.shape)  # its forward map is z = (ε − loc)·exp(−log_scale)
        with torch.no_grad():
            scale.log_scale.fill_(-math.log(INIT_SCALE))
        masks = [Unmasked(c)] + ([Checkerboard(c, h, w, parity=i % 2) for i in range(num_steps)]
                                 if h * w >= 2 else [])
        couplings = [AffineCoupling(m, self._net(m, hidden_channels), rescale_init=1.0,
                                    penalize_rescale=False) for m in masks]
        self.flow = Sequential(scale, *couplings)

    def _net(self, mask, hidden: int) -> nn.Module:
        return Conditioned(GlowNet(mask.in_features + self.slot.features, 2 * mask.out_features,
                                   hidden), self.slot)

    def _flow(self, x: Tensor, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``g`` (``ε → z``, ``log|det ∂z/∂ε|``) or its inverse (``z → ε``, ``log|det ∂ε/∂z|``)
        given the features of the levels ``x`` (set in the slot for this call only)."""
        x = x if x.is_floating_point() else x.float()
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        self.slot.value = self.features(_levels_to_net(x, self.num_levels))
        try:
            return self.flow.inverse(v) if inverse else self.flow(v)
        finally:
            self.slot.value = None  # the features of this batch are not kept past the call

    @staticmethod
    def _log_q(eps: Tensor, log_det_eps: Tensor, z: Tensor) -> Tensor:
        """``log N(ε) + log|det ∂ε/∂z| − Σ log sigmoid'(z)``, the one formula of both directions."""
        log_sigmoid_grad = -(F.softplus(-z) + F.softplus(z)).flatten(1).sum(dim=1)
        return standard_normal_log_prob(eps.flatten(1)) + log_det_eps - log_sigmoid_grad

    def sample_and_log_prob(self, x: Tensor, shard: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, C, H, W)`` levels -> ``(u, log q(u|x))``: ``u`` of ``x``'s shape in
        ``[0, 1)``, the ``(B,)`` log-density in nats; reparametrised (differentiable in the
        dequantizer's parameters). ``ε`` comes from the global RNG through :func:`shard_noise`
        (``shard``: as for the uniform dequantizer)."""
        eps = shard_noise(torch.randn, x if x.is_floating_point() else x.float(), shard)
        z, log_det = self._flow(x, eps, inverse=False)
        u = torch.sigmoid(z).clamp(max=1 - torch.finfo(z.dtype).eps / 2)
        return u, self._log_q(eps, -log_det, z)

    forward = sample_and_log_prob

    def log_prob(self, u: Tensor, x: Tensor) -> Tensor:
        """``(B,)`` ``log q(u|x)`` in nats of offsets ``u`` in ``(0, 1)`` given levels ``x``
        (both ``(B, C, H, W)``): the density direction, ``z = logit(u)``, ``ε = g⁻¹(z)``."""
        z = torch.logit(u)
        eps, log_det = self._flow(x, z, inverse=True)
        return self._log_q(eps, log_det, z)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_levels={self.num_levels}"
