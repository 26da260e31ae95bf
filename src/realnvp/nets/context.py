"""Conditioning on a context: the slot a conditional flow fills on every call, and the network
wrapper that reads it.

A conditional flow (``Flow(..., context=ContextSlot(k))``) stores the ``(B, k)`` context of each
call (``log_prob(x, context)``, ``sample(n, context)``, ...) in its slot before running its
bijector; every network built with the same slot reads it from there. The layers themselves keep
the one-argument contract of :mod:`realnvp.bijectors.base`, so every bijector (couplings,
autoregressive layers, batch norms) composes as before. The slot holds the last call's context
until the next call (memory-saving backprop re-runs the networks in the backward pass, after the
call has returned); a model is not meant to be called from two threads at once.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


class ContextSlot:
    """The ``(B, features)`` context of the call in progress (``value``), shared by a flow and
    its conditional networks. Not a module: it holds no parameters and nothing to save."""

    def __init__(self, features: int):
        if features < 1:
            raise ValueError(f"a context needs at least one feature, got {features}")
        self.features = int(features)
        self.value: Tensor | None = None

    def read(self) -> Tensor:
        """The current context; an error if the flow was called without one."""
        if self.value is None:
            raise RuntimeError("a conditional network ran outside a call of its flow with a context")
        return self.value

    def __deepcopy__(self, memo) -> ContextSlot:
        # a copy of a model is not inside the call in progress: an empty slot (the call's
        # context may be a non-leaf tensor of an autograd graph, which cannot be deep-copied);
        # ``copy.deepcopy``'s memo keeps the copy shared by the copied networks
        return ContextSlot(self.features)

    def __repr__(self) -> str:
        return f"ContextSlot({self.features})"


class Conditioned(nn.Module):
    """``net(concat(h, c))`` with ``c`` the slot's ``(B, k)`` context, repeated over ``h``'s
    spatial positions for ``(B, C, H, W)`` inputs (as extra channels), or a ``(B, k, H, W)``
    context of feature maps taken as it is (a dequantizer's features of the image it
    dequantizes): ``net`` must take ``k`` more input features (channels) than the unconditional
    network would."""

    def __init__(self, net: nn.Module, slot: ContextSlot):
        super().__init__()
        self.net = net
        self.slot = slot

    def forward(self, h: Tensor) -> Tensor:
        c = self.slot.read().to(h.dtype)
        if h.dim() > 2 and c.dim() == 2:
            c = c.view(*c.shape, *([1] * (h.dim() - 2))).expand(-1, -1, *h.shape[2:])
        return self.net(torch.cat((h, c), dim=1))


@contextlib.contextmanager
def placeholder(slot: ContextSlot | None):
    """Within the block the slot holds a ``(1, k)`` zero context (``None``: nothing to do), for
    code that runs the networks on one example outside a call of the flow (a multi-scale
    bijector probing its stages' output shapes at construction)."""
    if slot is None:
        yield
        return
    slot.value = torch.zeros(1, slot.features)
    try:
        yield
    finally:
        slot.value = None


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B,)`` integer class labels as a ``(B, num_classes)`` context; a ``ValueError`` naming
    the first label outside ``[0, num_classes)``."""
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"label {int(labels[bad][0])} is out of range: the model has classes "
                         f"0 to {num_classes - 1}")
    return nn.functional.one_hot(labels.long(), num_classes).to(dtype)
