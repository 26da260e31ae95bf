"""Glow's invertible 1×1 convolution (Kingma & Dhariwal 2018, §3.2), LU-parametrised or plain.

``lu=True`` (the default; the paper's "LU decomposition" paragraph):
``W = P · L · (U + diag(sign · exp(log_abs_s)))`` with P a fixed permutation, L unit lower
triangular and U strictly upper triangular, so ``log|det W| = Σ log_abs_s`` costs O(C).
``lu=False``: W itself is the parameter and ``log|det W|`` is computed in float64 by
``slogdet`` (O(C³)); this is the variant the authors' released code runs (in its
``invertible_1x1_conv`` the plain form is the ``if True:`` branch, the LU form the ``else:``).
Both start at the same random rotation for the same ``generator``. Acts on channels of
``(B, C, H, W)`` (log-det times H·W) or on features of ``(B, C)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Bijector


class Invertible1x1Conv(Bijector):
    """A learned channel-mixing linear map initialised to a random rotation.

    ``lu``: parametrise W by its LU decomposition (parameters ``lower``, ``upper``, ``log_abs_s``;
    buffers ``perm``, ``sign_s``, ``lower_mask``) or by the matrix itself (parameter ``w``). See
    the module docstring.
    """

    recomputable = True

    def __init__(self, channels: int, generator: torch.Generator | None = None, lu: bool = True):
        super().__init__()
        self.channels = channels
        self.lu = bool(lu)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        if not self.lu:
            self.w = nn.Parameter(q.float())
            return
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
        if not self.lu:
            return self.w
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

    def log_abs_det(self) -> Tensor:
        """``log|det W|`` (a scalar): ``Σ log_abs_s`` with ``lu``, else ``slogdet`` in float64."""
        if self.lu:
            return self.log_abs_s.sum()
        return torch.linalg.slogdet(self.w.double())[1]

    def _log_det(self, x: Tensor) -> Tensor:
        total = self.log_abs_det() * math.prod(x.shape[2:])
        return total.to(torch.promote_types(x.dtype, torch.float32)).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(x, self.weight()), self._log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        w_inv = torch.linalg.inv(self.weight().double())
        return self._mix(y, w_inv), (-self._log_det(y) if with_log_det else None)

    def extra_repr(self) -> str:
        return f"{self.channels}, lu={self.lu}"
