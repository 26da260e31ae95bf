"""Dynamics ``f(t, z[, context])`` for continuous normalizing flows (:class:`~realnvp.bijectors.CNF`).

The layers are FFJORD's "concat-squash" layers (Grathwohl et al., 2019, reference code
``lib/layers/diffeq_layers/basic.py``): a linear map (or convolution) of the state whose output is
gated and shifted by functions of the time, ``W z · σ(a t + c) + b t``. A context, when given, is
appended to the time as the hypernetworks' input (``[t, context]``).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "swish": nn.SiLU}


def _hyper_input(t: Tensor, n: int, like: Tensor, context: Tensor | None) -> Tensor:
    """``(n, 1 + context_dim)``: the time broadcast over the batch, then the context."""
    tt = t.to(like).reshape(1, 1).expand(n, 1)
    if context is None:
        return tt
    return torch.cat((tt, context.to(like).reshape(n, -1)), dim=1)


class ConcatSquashLinear(nn.Module):
    """``Linear(z) · sigmoid(gate([t, c])) + bias([t, c])`` (the gate with a bias, the shift without)."""

    def __init__(self, dim_in: int, dim_out: int, context_dim: int = 0):
        super().__init__()
        self._layer = nn.Linear(dim_in, dim_out)
        self._hyper_gate = nn.Linear(1 + context_dim, dim_out)
        self._hyper_bias = nn.Linear(1 + context_dim, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = _hyper_input(t, x.shape[0], x, context)
        return self._layer(x) * self._hyper_gate(h).sigmoid() + self._hyper_bias(h)


class ConcatSquashConv2d(nn.Module):
    """The convolutional concat-squash layer: ``Conv(z) · sigmoid(gate([t, c])) + bias([t, c])``
    with the gate and shift per channel."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3, context_dim: int = 0):
        super().__init__()
        self._layer = nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2)
        self._hyper_gate = nn.Linear(1 + context_dim, dim_out)
        self._hyper_bias = nn.Linear(1 + context_dim, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = _hyper_input(t, x.shape[0], x, context)
        gate = self._hyper_gate(h).sigmoid()[:, :, None, None]
        return self._layer(x) * gate + self._hyper_bias(h)[:, :, None, None]


class _ConcatSquashNet(nn.Module):
    def __init__(self, layers: list[nn.Module], activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(ACTIVATIONS[activation]() for _ in layers[:-1])

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h, context)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h


class ConcatSquashMLP(_ConcatSquashNet):
    """FFJORD's vector dynamics: ``num_hidden_layers`` concat-squash layers of width ``hidden``
    (with ``activation`` after each) and a concat-squash output layer back to ``dim``. The
    reference code's toy setting is ``hidden=64, num_hidden_layers=3, activation="tanh"``; its
    tabular setting uses softplus."""

    def __init__(self, dim: int, hidden: int = 64, num_hidden_layers: int = 3, activation: str = "tanh",
                 context_dim: int = 0):
        widths = [dim] + [hidden] * num_hidden_layers + [dim]
        super().__init__([ConcatSquashLinear(a, b, context_dim) for a, b in pairwise(widths)],
                         activation)


class ConcatSquashConvNet(_ConcatSquashNet):
    """Image dynamics: 3×3 concat-squash convolutions ``channels → hidden… → channels``
    (``num_hidden_layers`` hidden layers; the reference code's multi-scale MNIST/CIFAR-10 runs use
    ``64,64,64`` with softplus)."""

    def __init__(self, channels: int, hidden: int = 64, num_hidden_layers: int = 3,
                 activation: str = "softplus", context_dim: int = 0):
        widths = [channels] + [hidden] * num_hidden_layers + [channels]
        super().__init__([ConcatSquashConv2d(a, b, 3, context_dim) for a, b in pairwise(widths)],
                         activation)
