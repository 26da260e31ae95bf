"""A learned diagonal affine map: the base Gaussian ``N(μ, diag σ²)`` of a variational posterior."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijector


class ElementwiseAffine(Bijector):
    """Sampling direction (latent to data): ``x = μ + exp(s)·z``, ``log|det ∂x/∂z| = Σ s``;
    density direction: ``z = (x − μ)·exp(−s)``. Starts at the identity (``μ = 0``, ``s = 0``)."""

    recomputable = True

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def _log_det(self, x: Tensor) -> Tensor:
        total = self.log_scale.sum().to(torch.promote_types(x.dtype, torch.float32))
        return total.expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.loc) * torch.exp(-self.log_scale), -self._log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self.loc + torch.exp(self.log_scale) * y, self._log_det(y)
