"""Planar flow layer (Rezende & Mohamed, 2015, §4.1): a sampling-direction layer.

In the sampling direction (latent ``z`` to data ``x``, the package's ``inverse``)::

    x = z + û·tanh(wᵀz + b),   log|det ∂x/∂z| = log|1 + (1 − tanh²(wᵀz + b))·wᵀû|

with ``û = u + (m(wᵀu) − wᵀu)·w/‖w‖²``, ``m(a) = −1 + softplus(a)``, so that ``wᵀû = m(wᵀu) > −1``
for any raw ``u``, ``w``: the map is then invertible and the log-det is finite.

The map has no closed-form inverse, so the density direction (``forward``: data to latent, what
:meth:`realnvp.Flow.log_prob` needs) is refused with :class:`NoDensityDirection` unless the layer
is built with ``density_direction=True``. Then ``forward`` inverts the map numerically: along
``w`` the equation is the scalar ``a + wᵀû·tanh(a) = wᵀx + b`` for ``a = wᵀz + b``, strictly
increasing in ``a`` (``wᵀû > −1``) and bracketed by ``wᵀx + b ± |wᵀû|``; it is solved by
bisection to round-off, then one Newton step with the graph on gives the implicit-function
gradient; ``z = x − û·tanh(a)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Bijector


class NoDensityDirection(NotImplementedError):
    """A sampling-direction layer was asked for the density direction (data to latent)."""


def refuse_density_direction(layer: Bijector) -> NoDensityDirection:
    name = type(layer).__name__
    return NoDensityDirection(
        f"{name} has no closed-form inverse: it maps latent to data only (the sampling direction), "
        f"so log_prob of an arbitrary point is not available; use Flow.rsample_and_log_prob(n) for "
        f"samples and their exact log-density, or build the layer with density_direction=True for "
        f"a numerical inverse")


class Planar(Bijector):
    """``x = z + û·tanh(wᵀz + b)`` on ``(B, dim)``; see the module docstring.

    Args:
        dim: the number of features.
        density_direction: offer ``forward`` (data to latent) by a numerical inverse; without
            it ``forward`` raises :class:`NoDensityDirection`.
    """

    def __init__(self, dim: int, density_direction: bool = False):
        super().__init__()
        if dim < 1:
            raise ValueError(f"Planar needs dim >= 1, got {dim}")
        bound = 1 / math.sqrt(dim)
        self.u = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(()))
        self.density_direction = density_direction

    def u_hat(self) -> Tensor:
        """``û``, the constrained ``u`` (``wᵀû = −1 + softplus(wᵀu) > −1``)."""
        wu = self.w @ self.u
        m = -1 + F.softplus(wu)
        return self.u + (m - wu) * self.w / (self.w @ self.w).clamp_min(torch.finfo(self.w.dtype).tiny)

    def _log_det(self, a: Tensor, wu_hat: Tensor) -> Tensor:
        """``log(1 + h'(a)·wᵀû)``, per example (> −∞ since ``wᵀû > −1``, ``0 < h' ≤ 1``)."""
        h_prime = 1 - torch.tanh(a).pow(2)
        return torch.log1p(h_prime * wu_hat).to(torch.promote_types(a.dtype, torch.float32))

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        u_hat = self.u_hat()
        a = y @ self.w + self.b
        x = y + torch.tanh(a).unsqueeze(1) * u_hat
        return x, (self._log_det(a, self.w @ u_hat) if with_log_det else None)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.density_direction:
            raise refuse_density_direction(self)
        u_hat = self.u_hat()
        wu = self.w @ u_hat
        c = x @ self.w + self.b  # = a + wᵀû·tanh(a)
        with torch.no_grad():
            spread = wu.abs().detach()
            lo, hi = c.detach() - spread, c.detach() + spread
            wu_d = wu.detach()
            for _ in range(64 if x.dtype == torch.float64 else 40):
                mid = 0.5 * (lo + hi)
                above = mid + wu_d * torch.tanh(mid) > c.detach()
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            a0 = 0.5 * (lo + hi)
        # one Newton step with the graph: exact value to round-off, implicit-function gradient
        g = a0 + wu * torch.tanh(a0) - c
        a = a0 - g / (1 + wu * (1 - torch.tanh(a0).pow(2)))
        z = x - torch.tanh(a).unsqueeze(1) * u_hat
        return z, -self._log_det(a, wu)
