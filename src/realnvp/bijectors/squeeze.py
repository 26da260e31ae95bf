"""Squeeze: (B, C, H, W) -> (B, 4C, H/2, W/2) and back (paper §3.6, Figure 3).

Ordering: output channel ``4c + 2i + j`` holds input channel ``c`` at offset ``(i, j)`` of each
2×2 block (the order of :func:`torch.nn.functional.pixel_unshuffle`). The first half of the
squeezed channels therefore never equals a checkerboard colour of the unsqueezed image: for one
input channel the halves are the top and bottom rows of each block, while a checkerboard colour is a
diagonal. So the channel-wise couplings after a squeeze partition the pixels differently from the
checkerboard couplings before it, as the paper requires.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Bijector, zero_log_det


class Squeeze(Bijector):
    """Space-to-channel reshaping; a permutation, so its log-det is zero."""

    recomputable = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"Squeeze expects (B, C, H, W) with even H and W, got {tuple(x.shape)}")
        return F.pixel_unshuffle(x, 2), zero_log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if y.dim() != 4 or y.shape[1] % 4:
            raise ValueError(
                f"Squeeze.inverse expects (B, 4C, H, W), got {tuple(y.shape)}"
            )
        return F.pixel_shuffle(y, 2), (zero_log_det(y) if with_log_det else None)
