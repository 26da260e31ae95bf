"""Squeeze: (B, C, H, W) -> (B, 4C, H/2, W/2) and back (paper §3.6, Figure 3), and the channel
order in which the multi-scale architecture factors out one checkerboard colour.

Ordering: output channel ``4c + 2i + j`` holds input channel ``c`` at offset ``(i, j)`` of each
2×2 block (the order of :func:`torch.nn.functional.pixel_unshuffle`, and of the authors'
``squeeze_2x2``). The first half of the squeezed channels therefore never equals a checkerboard
colour of the unsqueezed image: for one input channel the halves are the top and bottom rows of
each block, while a checkerboard colour is a diagonal. So the channel-wise couplings after a
squeeze partition the pixels differently from the checkerboard couplings before it, as the paper
requires.
"""

from __future__ import annotations

import torch
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


#: offsets ``(i, j)`` of a 2×2 block in the order the authors' ``squeeze_2x2_ordered`` stacks
#: them: one checkerboard colour (i + j even) in the first half, the other in the second
_ORDERED_OFFSETS = ((0, 0), (1, 1), (0, 1), (1, 0))


def checkerboard_colour_order(channels: int) -> list[int]:
    """The permutation of :class:`Squeeze`'s ``4·channels`` output channels that puts the odd
    checkerboard colour (offsets (0, 1), (1, 0) of every 2×2 block, i + j odd) in the first half
    and the even one ((0, 0), (1, 1)) in the second, offset-major: the authors'
    ``squeeze_2x2_ordered`` layout with its two halves swapped. Element ``k`` is the squeezed
    channel that lands in channel ``k``."""
    odd, even = _ORDERED_OFFSETS[2:], _ORDERED_OFFSETS[:2]
    return [4 * c + 2 * i + j for i, j in (*odd, *even) for c in range(channels)]


class ChannelPermutation(Bijector):
    """``y[:, k] = x[:, perm[k]]``: a permutation of dimension 1, log-det zero."""

    recomputable = True

    def __init__(self, perm: list[int]):
        super().__init__()
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"not a permutation of 0..{len(perm) - 1}: {perm}")
        self.register_buffer("perm", torch.tensor(perm), persistent=False)
        self.register_buffer("inv", torch.argsort(self.perm), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.perm), zero_log_det(x)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return y.index_select(1, self.inv), (zero_log_det(y) if with_log_det else None)

    def extra_repr(self) -> str:
        return f"perm={self.perm.tolist()}"
