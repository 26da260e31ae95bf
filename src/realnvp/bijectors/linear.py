"""Glow's invertible 1×1 convolution, LU-parametrised (Kingma & Dhariwal 2018, §3.2).

``W = P · L · (U + diag(sign · exp(log_abs_s)))`` with P a fixed permutation, L unit lower
triangular and U strictly upper triangular, so ``log|det W| = Σ log_abs_s`` costs O(C).
Acts on channels of ``(B, C, H, W)`` (log-det times H·W) or on features of ``(B, C)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Bijector


class Invertible1x1Conv(Bijector):
    """A learned channel-mixing linear map initialised to a random rotation."""

    recomputable = True

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self) -> Tensor:
        """The (C, C) matrix W applied as ``y_c = Σ_k W[c, k] x_k``."""
        eye = torch.eye(self.channels, device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return self.perm @ lower @ upper

    def _mix(self, x: Tensor, w: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"Invertible1x1Conv expects (B, {self.channels}, ...) input, got {tuple(x.shape)}"
            )
        return torch.einsum("ck,bk...->bc...", w.to(x.dtype), x)

    def _log_det(self, x: Tensor) -> Tensor:
        total = self.log_abs_s.sum() * math.prod(x.shape[2:])
        return total.to(torch.promote_types(x.dtype, torch.float32)).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(x, self.weight()), self._log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        w_inv = torch.linalg.inv(self.weight().double())
        return self._mix(y, w_inv), (-self._log_det(y) if with_log_det else None)
