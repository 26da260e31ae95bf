"""MADE: a masked multilayer perceptron whose output for feature i sees only the features before
i in a chosen order (Germain et al., 2015, "MADE: Masked Autoencoder for Distribution
Estimation", §4).

Degrees (§4, eqs. 12-13). The ``D`` inputs get the degrees ``m(d) = order[d]``, a permutation of
``1..D``; every hidden unit ``k`` gets a degree ``m(k)`` in ``1..D−1``; a weight from unit ``a`` to
hidden unit ``b`` is kept when ``m(b) ≥ m(a)``, a weight from hidden unit ``a`` to an output of
feature ``d`` when ``order[d] > m(a)``. So output ``d`` depends on input ``j`` only if
``order[j] < order[d]``: the Jacobian of the outputs with respect to the inputs is strictly
triangular once the features are sorted by ``order``.

Hidden degrees are assigned cyclically, ``m(k) = (k mod (D−1)) + 1`` (the MAF authors'
"sequential" degrees), the same in every hidden layer: every hidden unit has at least one input
(the feature of rank 1 reaches every unit) and at least one output (the feature of rank ``D`` sees
every unit). With fewer than ``D − 1`` hidden units the degrees above the width never occur, and
the features of those ranks reach no output: use ``hidden ≥ D − 1``.

A context (conditional MADE) is an extra input without a mask, with degree 0: hidden degrees are
then ``m(k) = k mod D``, and the units of degree 0 see the context alone, so that it reaches the
outputs of the first feature too (which see no input feature at all). Use ``hidden ≥ D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)ᵀ + b`` with a fixed boolean ``mask`` ``M`` of shape ``(out, in)``, kept as a
    buffer (in the state dict, so a checkpoint restores the connectivity it was trained with)."""

    def __init__(self, mask: Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.bool())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class _MaskedResidualBlock(nn.Module):
    """``h + W₂ relu(W₁ relu(h))`` with two hidden-to-hidden masks (``m(b) ≥ m(a)``): the skip
    connects each unit to itself, which the same degrees allow, so the block keeps the
    autoregressive property (nflows' ``MaskedResidualBlock``). ``W₂`` starts at zero: each block
    starts as the identity."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.first = MaskedLinear(mask)
        self.second = MaskedLinear(mask)
        with torch.no_grad():
            self.second.weight.zero_()
            self.second.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.second(F.relu(self.first(F.relu(h))))


def check_order(order: Tensor | None, features: int) -> Tensor:
    """``order`` as a long tensor, validated as a permutation of ``1..features`` (the identity
    order ``1..features`` for ``None``)."""
    if order is None:
        return torch.arange(1, features + 1)
    order = torch.as_tensor(order)
    if (order.dim() != 1 or order.numel() != features or order.is_floating_point()
            or not torch.equal(torch.sort(order).values, torch.arange(1, features + 1))):
        raise ValueError(
            f"order must be a permutation of 1..{features} (order[d] is feature d's rank), "
            f"got {order.tolist()}"
        )
    return order.long()


class MADE(nn.Module):
    """Masked MLP: ``(B, features)`` (and ``(B, context_features)``) to
    ``(B, features, out_per_feature)``, where ``out[:, d]`` depends only on the inputs ``j`` with
    ``order[j] < order[d]`` (and on the context).

    Args:
        features: D, the number of autoregressive inputs.
        out_per_feature: P, the number of outputs per feature (2 for an affine transformer,
            ``3K − 1`` for a K-bin spline).
        hidden: width of every hidden layer (at least ``D − 1``, ``D`` with a context, for every
            input to reach the outputs it may).
        num_layers: hidden layers (``residual=False``) or residual blocks after the first masked
            layer (``residual=True``, two masked layers each).
        residual: masked residual blocks (see :class:`_MaskedResidualBlock`).
        order: ``order[d]`` is the rank (1..D) of feature ``d`` in the autoregressive order;
            default ``1..D`` (feature 0 first). Reversed (``D..1``) or random orders between
            stacked layers are the MAF paper's choices.
        context_features: width of an optional context input, connected to every unit of the
            first hidden layer without a mask (degree 0: the context reaches every output).
        out_scale: the output layer's weights start at this multiple of the default
            initialisation and its bias at zero, so a flow built on it starts near the identity.

    :attr:`passes` is the number of sequential passes that invert a transform built on the
    network (the longest chain of dependencies among the features; at most D).
    """

    def __init__(
        self,
        features: int,
        out_per_feature: int,
        hidden: int = 128,
        num_layers: int = 2,
        residual: bool = False,
        order: Tensor | None = None,
        context_features: int = 0,
        out_scale: float = 1e-2,
    ):
        super().__init__()
        if features < 1 or out_per_feature < 1 or hidden < 1:
            raise ValueError(
                f"MADE needs features, out_per_feature and hidden >= 1, got {features}, "
                f"{out_per_feature}, {hidden}"
            )
        if num_layers < 1:
            raise ValueError(f"MADE needs at least one hidden layer, got num_layers={num_layers}")
        self.features, self.out_per_feature = features, out_per_feature
        self.context_features = context_features
        order = check_order(order, features)
        self.register_buffer("order", order)

        # degrees: hidden units cyclic in 1..D−1, or in 0..D−1 with a context (degree 0: the
        # units that see the context alone, through which it reaches the first feature's outputs)
        low = 0 if context_features or features == 1 else 1
        m_hidden = torch.arange(hidden) % (features - low) + low
        m_out = order.repeat_interleave(out_per_feature)
        mask_in = m_hidden[:, None] >= order[None, :]
        mask_hidden = m_hidden[:, None] >= m_hidden[None, :]
        mask_out = m_out[:, None] > m_hidden[None, :]

        self.input = MaskedLinear(mask_in)
        self.context = nn.Linear(context_features, hidden, bias=False) if context_features else None
        if residual:
            self.hidden = nn.ModuleList(_MaskedResidualBlock(mask_hidden) for _ in range(num_layers))
        else:
            self.hidden = nn.ModuleList(MaskedLinear(mask_hidden) for _ in range(num_layers - 1))
        self.residual = bool(residual)
        self.output = MaskedLinear(mask_out)
        with torch.no_grad():
            self.output.weight.mul_(out_scale)
            self.output.bias.zero_()
        self.passes = _passes(self.connectivity(), order)

    def connectivity(self) -> Tensor:
        """``(D, D)`` boolean: entry ``[d, j]`` tells whether output ``d`` can depend on input
        ``j`` through the masks (the union over the P outputs of feature ``d``)."""
        def step(a: Tensor, mask: Tensor) -> Tensor:
            return (mask @ a).clamp_(max=1.0)

        def m(layer: MaskedLinear) -> Tensor:
            return layer.mask.cpu().double()

        reach = m(self.input)
        for layer in self.hidden:
            if self.residual:
                reach = (reach + step(step(reach, m(layer.first)), m(layer.second))).clamp_(max=1.0)
            else:
                reach = step(reach, m(layer))
        reach = step(reach, m(self.output))
        return reach.view(self.features, self.out_per_feature, self.features).amax(dim=1) > 0

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"MADE expects (B, {self.features}) input, got shape {tuple(x.shape)}")
        if self.context is not None:
            if context is None or context.shape != (x.shape[0], self.context_features):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"MADE expects a context of shape ({x.shape[0]}, {self.context_features}), got {got}"
                )
        elif context is not None:
            raise ValueError("this MADE was built without context features (context_features=0)")
        h = self.input(x)
        if self.context is not None:
            h = h + self.context(context)
        if self.residual:
            for block in self.hidden:
                h = block(h)
        else:
            for layer in self.hidden:
                h = layer(F.relu(h))
        return self.output(F.relu(h)).view(x.shape[0], self.features, self.out_per_feature)

    def extra_repr(self) -> str:
        return (f"features={self.features}, out_per_feature={self.out_per_feature}, "
                f"residual={self.residual}, context_features={self.context_features}, passes={self.passes}")


def _passes(connectivity: Tensor, order: Tensor) -> int:
    """The longest chain of dependencies among the features, counted in features: inverting a
    transform whose parameters for feature ``d`` come from the features it depends on takes this
    many sequential passes, each solving the features whose dependencies are all solved."""
    depth = torch.zeros(len(order), dtype=torch.long)
    for d in torch.argsort(order).tolist():  # in rank order: a feature's dependencies come first
        parents = connectivity[d]
        depth[d] = 1 + (int(depth[parents].max()) if bool(parents.any()) else 0)
    return int(depth.max())
