"""The bijector contract shared by every layer.

Direction convention (used everywhere in the package): ``forward`` maps data to latent,
``inverse`` maps latent to data.

- ``y, log_det = layer(x)``: ``log_det`` has shape ``(B,)`` and is ``log|det dy/dx|`` per example.
- ``x, log_det = layer.inverse(y)``: ``log_det`` is ``log|det dx/dy|``, the negative of the
  forward value at the matching point.

Log-determinants are in nats and are accumulated in at least float32, even when the layer
runs under a lower-precision autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first, in at least float32: ``(B, ...) -> (B,)``."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    if x.dim() == 2:
        return x.sum(dim=1, dtype=dtype)
    return x.reshape(x.shape[0], -1).sum(dim=1, dtype=dtype)


def zero_log_det(x: Tensor) -> Tensor:
    """A ``(B,)`` log-det of zeros for volume-preserving layers, in at least float32."""
    return x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))


class Bijector(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement :meth:`forward` and :meth:`inverse`; both return ``(output, log_det)``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def invert(self, y: Tensor) -> Tensor:
        """``inverse(y)[0]``: the inverse map alone, which is all that sampling and decoding
        need. Layers whose log-det costs operations of its own override it to skip them."""
        return self.inverse(y)[0]


class Sequential(Bijector):
    """Composition of bijectors: applies them in order, sums the log-dets; inverts in reverse.

    With ``memory_saving = True`` (see :mod:`realnvp.bijectors.invertible_backprop`) a forward
    pass that records gradients keeps only the chain's output and recomputes every layer's input
    from its output in the backward pass, instead of storing the activations.
    """

    memory_saving: bool = False

    def __init__(self, *layers: Bijector):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            from .invertible_backprop import invertible_forward

            return invertible_forward(self.layers, x)
        return _accumulate(x, self.layers)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return _accumulate(y, (layer.inverse for layer in reversed(self.layers)))

    def invert(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.invert(y)
        return y


def _accumulate(x: Tensor, maps) -> tuple[Tensor, Tensor]:
    """Apply ``maps`` in turn, summing their log-dets (no zero tensor to start from: one
    operation fewer per chain, which counts for small vector flows)."""
    total = None
    for f in maps:
        x, log_det = f(x)
        total = log_det if total is None else total + log_det
    return x, zero_log_det(x) if total is None else total


class Inverse(Bijector):
    """Swaps the two directions of a bijector (e.g. to use a data-side layer on the latent side)."""

    def __init__(self, bijector: Bijector):
        super().__init__()
        self.bijector = bijector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijector(y)
