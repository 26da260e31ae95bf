"""A plain multilayer perceptron for vector couplings (tabular and 2-D data)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .weightnorm import WNLinear


class MLP(nn.Module):
    """``(B, in_features) -> (B, out_features)``: ``num_layers`` hidden layers of width ``hidden``
    with ReLU, weight-normalised; the output layer starts at a small scale (``out_scale``) so a
    coupling begins near the identity while every parameter gets a gradient. ``out_bias=False``
    drops the output bias where it would be redundant (a shift followed by batch norm)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        num_layers: int = 2,
        out_scale: float = 1e-2,
        out_bias: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers += [WNLinear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(WNLinear(width, out_features, bias=out_bias, init_scale=out_scale))
        self.net = nn.Sequential(*layers)
        if out_bias:
            with torch.no_grad():
                self.net[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
