"""The multi-scale architecture's factor-out (paper §3.6).

After every stage but the last, half of the channels leave the flow and go straight to the prior;
the other half continue to the next stage. The final latent is the concatenation of all factored
parts, flattened: ``(B, C, H, W) -> (B, C·H·W)``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from .base import Bijector, zero_log_det


def _stage_output_shape(stage: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        was_training = stage.training
        stage.eval()
        out, _ = stage(torch.zeros(1, *shape))
        stage.train(was_training)
    return tuple(out.shape[1:])


class MultiScale(Bijector):
    """Stages with half the channels factored out after each one but the last.

    Args:
        stages: bijectors applied in turn; stage ``k`` receives the channels kept after stage
            ``k − 1``.
        in_shape: ``(C, H, W)`` of the input to the first stage.

    ``forward``: ``(B, C, H, W) -> (B, D)`` latent, concatenating ``[z_1, …, z_S]`` flattened, where
    ``z_k`` (k < S) is the first half of stage k's output channels and ``z_S`` the whole output of
    the last stage. ``inverse`` takes such a ``(B, D)`` latent back.
    """

    def __init__(self, stages: list[Bijector], in_shape: tuple[int, int, int]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.in_shape = tuple(in_shape)
        factored = []
        shape = self.in_shape
        for k, stage in enumerate(self.stages):
            out = _stage_output_shape(stage, shape)
            if k < len(self.stages) - 1:
                c = out[0] // 2
                factored.append((c, *out[1:]))
                shape = (out[0] - c, *out[1:])
            else:
                factored.append(out)
        #: shapes (C, H, W) of the latent parts z_1 … z_S, in the order they are concatenated
        self.latent_shapes = factored
        self._sizes = [math.prod(s) for s in factored]

    def scale_slices(self) -> list[slice]:
        """Where each scale's part sits in the flat ``(B, D)`` latent: slice ``k`` holds the
        coordinates of ``z_k`` (shape :attr:`latent_shapes` ``[k]`` flattened), finest scale
        first (factored out after the first stage), coarsest (the last stage's output) last. The
        slices are contiguous, in order, and cover ``0 … D−1`` exactly once."""
        ends = list(itertools.accumulate(self._sizes))
        return [slice(end - size, end) for size, end in zip(self._sizes, ends, strict=True)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts, total = [], zero_log_det(x)
        for k, stage in enumerate(self.stages):
            x, log_det = stage(x)
            total = total + log_det
            if k < len(self.stages) - 1:
                c = self.latent_shapes[k][0]
                parts.append(x[:, :c].reshape(x.shape[0], -1))
                x = x[:, c:]
        parts.append(x.reshape(x.shape[0], -1))
        return torch.cat(parts, dim=1), total

    def _inverse(self, z: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if z.dim() != 2 or z.shape[1] != sum(self._sizes):
            raise ValueError(f"expected a (B, {sum(self._sizes)}) latent, got {tuple(z.shape)}")
        parts = [p.reshape(z.shape[0], *s) for p, s in
                 zip(z.split(self._sizes, dim=1), self.latent_shapes, strict=True)]
        total = zero_log_det(z) if with_log_det else None
        x = parts[-1]
        for k in reversed(range(len(self.stages))):
            if k < len(self.stages) - 1:
                x = torch.cat((parts[k], x), dim=1)
            if with_log_det:
                x, log_det = self.stages[k].inverse(x)
                total = total + log_det
            else:
                x = self.stages[k].invert(x)
        return x, total
