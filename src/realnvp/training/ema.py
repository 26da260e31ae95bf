"""An exponential moving average of a model's weights, for evaluation and sampling."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..bijectors import BatchNorm


class EMA:
    """``avg ← decay·avg + (1 − decay)·θ`` after every optimizer step.

    Batch-norm running statistics belong to the weights they were gathered with, so those of the
    training model do not fit the averaged weights; :meth:`calibrate` re-estimates them for the
    averaged model on training batches before it is evaluated.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor]) -> None:
        """Running statistics of the averaged model = plain averages over ``batches`` (``(model
        input, context or None)`` pairs), as with momentum ``1/(i+1)`` on the i-th batch."""
        norms = [m for m in self.model.modules()
                 if isinstance(m, BatchNorm | nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        self.model.train()
        try:
            for i, (y, context) in enumerate(batches):
                for m in norms:
                    m.momentum = 1.0 / (i + 1)
                self.model.log_prob(y, context)
        finally:
            for m, mom in zip(norms, saved, strict=True):
                m.momentum = mom
            self.model.eval()
