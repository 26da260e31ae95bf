"""A plain multilayer perceptron for vector couplings (tabular and 2-D data)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .weightnorm import WNLinear


class MLP(nn.Module):
    """``(B, in_features) -> (B, out_features)``: ``num_layers`` hidden layers of width ``hidden``
    with ReLU, weight-normalised (``weight_norm=False``: plain ``nn.Linear``, one operation and one
    parameter tensor fewer per layer, which is what small vector flows spend their time on); the
    output layer starts at a small scale (``out_scale``) so a coupling begins near the identity
    while every parameter gets a gradient. ``out_bias=False`` drops the output bias where it would
    be redundant (a shift followed by batch norm)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        num_layers: int = 2,
        out_scale: float = 1e-2,
        out_bias: bool = True,
        weight_norm: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers += [_linear(width, hidden, weight_norm), nn.ReLU()]
            width = hidden
        layers.append(_linear(width, out_features, weight_norm, bias=out_bias, init_scale=out_scale))
        self.net = nn.Sequential(*layers)
        if out_bias:
            with torch.no_grad():
                self.net[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _linear(fan_in: int, fan_out: int, weight_norm: bool, bias: bool = True, init_scale: float = 1.0):
    if weight_norm:
        return WNLinear(fan_in, fan_out, bias=bias, init_scale=init_scale)
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(init_scale)
    return layer
