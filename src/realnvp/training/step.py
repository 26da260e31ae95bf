"""One gradient step that leaves no trace when it goes wrong."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed


def gradient_step(ctx, batch) -> tuple[bool, Tensor]:
    """Forward, backward and gradient clipping for one batch; returns ``(all finite?, reported
    value)``. The optimizer step itself is the caller's.

    When the loss or the gradient norm is not finite (on any process) the gradients are dropped
    and the buffers the forward pass moved (batch-norm running statistics) are put back, so the
    step leaves no trace: parameters, optimizer moments and statistics are as before it.
    """
    buffers = [b.detach().clone() for b in ctx.buffers()]
    loss, value = ctx.objective.loss(ctx, batch)
    loss = ctx.faults.loss(ctx, loss)
    ctx.optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(ctx.parameters(), ctx.cfg.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
    finite = distributed.all_agree(finite, ctx.dist)
    if not finite:
        with torch.no_grad():
            for b, saved in zip(ctx.buffers(), buffers, strict=True):
                b.copy_(saved)
        ctx.optimizer.zero_grad(set_to_none=True)
    return finite, value
