"""Batch norm for the s/t networks that, under ``torchrun``, uses global-batch statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..syncstats import _distributed, batch_var_mean


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, except that in distributed training the batch statistics are gathered
    from every process (differentiably), like ``nn.SyncBatchNorm`` but also on the CPU.

    ``gain=False`` drops the learned per-channel gain (``weight`` is ``None``) and keeps the
    learned shift: the authors' ``batch_norm(..., scale=False)``, which every batch norm of their
    s/t network is (with ε = 1e-4, this class's default)."""

    def __init__(self, num_features: int, eps: float = 1e-4, momentum: float = 0.1,
                 gain: bool = True, **kwargs):
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        if not gain and self.affine:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        var, mean, count = batch_var_mean(x, [0, 2, 3])
        if self.track_running_stats:  # switched off while memory-saving backprop recomputes
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var * (count / max(count - 1, 1))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = self.weight * scale
        out = (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
