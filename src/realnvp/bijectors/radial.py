"""Radial flow layer (Rezende & Mohamed, 2015, §4.1): a sampling-direction layer.

In the sampling direction (latent ``z`` to data ``x``, the package's ``inverse``)::

    x = z + β·h(r)·(z − z₀),   r = ‖z − z₀‖,   h(r) = 1/(α + r)
    log|det ∂x/∂z| = (d − 1)·log(1 + βh) + log(1 + βh + βh′r) = (d − 1)·log(1 + βh) + log(1 + αβh²)

with ``α = softplus(α̂) > 0`` and ``β = −α + softplus(β̂) > −α`` (the invertibility condition) for any
raw ``α̂``, ``β̂``.

R&M treat it as having no inverse; it has one in closed form (the radius solves
``r² + (α + β − r_x)·r − α·r_x = 0``), which ``forward`` (data to latent, the density direction)
uses when the layer is built with ``density_direction=True``; otherwise ``forward`` raises
:class:`~realnvp.bijectors.planar.NoDensityDirection`, like :class:`~realnvp.bijectors.Planar`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Bijector
from .planar import refuse_density_direction


class Radial(Bijector):
    """``x = z + β·(z − z₀)/(α + ‖z − z₀‖)`` on ``(B, dim)``; see the module docstring.

    Args:
        dim: the number of features.
        density_direction: offer ``forward`` (data to latent) by the closed-form inverse;
            without it ``forward`` raises :class:`~realnvp.bijectors.planar.NoDensityDirection`.
    """

    def __init__(self, dim: int, density_direction: bool = False):
        super().__init__()
        if dim < 1:
            raise ValueError(f"Radial needs dim >= 1, got {dim}")
        self.dim = dim
        self.z0 = nn.Parameter(torch.randn(dim) / dim ** 0.5)
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.randn(()) * 0.1)
        self.density_direction = density_direction

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """``(α, β)``, constrained: ``α > 0``, ``β > −α``."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def _log_det(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        out = (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h.pow(2))
        return out.to(torch.promote_types(r.dtype, torch.float32))

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        alpha, beta = self.alpha_beta()
        diff = y - self.z0
        r = diff.norm(dim=1)
        x = y + (beta / (alpha + r)).unsqueeze(1) * diff
        return x, (self._log_det(r, alpha, beta) if with_log_det else None)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.density_direction:
            raise refuse_density_direction(self)
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        rx = diff.norm(dim=1)
        # r = (rx − α − β + √D)/2 with D = (α + β − rx)² + 4α·rx; the other form where that cancels
        p = alpha + beta - rx
        root = torch.sqrt(p.pow(2) + 4 * alpha * rx)
        r = torch.where(p <= 0, 0.5 * (root - p), 2 * alpha * rx / (p + root))
        z = self.z0 + diff / (1 + beta / (alpha + r)).unsqueeze(1)
        return z, -self._log_det(r, alpha, beta)
