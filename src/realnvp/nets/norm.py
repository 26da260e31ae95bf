"""Batch norm for the s/t networks that, under ``torchrun``, uses global-batch statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..syncstats import _distributed, batch_var_mean


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, except that in distributed training the batch statistics are gathered
    from every process (differentiably), like ``nn.SyncBatchNorm`` but also on the CPU."""

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
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
