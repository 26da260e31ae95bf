"""Partitions of the input into a conditioning part and a transformed part (paper §3.4).

A mask tells a coupling layer three things: what the s/t network sees (``condition``), which
entries the affine map acts on (``active``), and how to put the two back together (``merge``).

- :class:`Checkerboard` keeps the full tensor and zeroes s and t on the conditioning squares, so
  the map is ``y = b⊙x + (1−b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x))`` with b = 1 where ``(i + j) % 2 == parity``.
- :class:`Halves` (channel-wise for images, feature-wise for vectors) splits dimension 1 into two
  contiguous halves and never multiplies by a mask at all: the network only sees the conditioning
  half and only emits s and t for the other one. This is the same map as the masked form with less
  arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def checkerboard(height: int, width: int, parity: int = 0, dtype=torch.float32) -> Tensor:
    """The (1, 1, H, W) checkerboard mask b with b[i, j] = 1 where ``(i + j) % 2 == parity``."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return ((i + j) % 2 == parity).to(dtype).view(1, 1, height, width)


class Mask(nn.Module):
    """Interface: how a coupling splits its input. See the module docstring."""

    #: number of channels (dim 1) that the s/t network receives
    in_features: int
    #: number of channels (dim 1) for which the network must emit s and t
    out_features: int

    def condition(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def active(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def restrict(self, h: Tensor) -> Tensor:
        """Zero a network output (s or t) wherever the layer must be the identity."""
        return h

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(condition(x), active(x))`` in one go (cheaper where both come from one split)."""
        return self.condition(x), self.active(x)

    def merge(self, x: Tensor, active: Tensor, cond: Tensor | None = None) -> Tensor:
        """The layer's output from its input ``x`` and the transformed ``active`` part;
        ``cond`` is ``condition(x)`` if the caller already has it."""
        raise NotImplementedError


class Checkerboard(Mask):
    """Spatial checkerboard mask for (B, C, H, W) inputs; ``parity`` 0 or 1 picks the squares kept."""

    def __init__(self, channels: int, height: int, width: int, parity: int = 0):
        super().__init__()
        if parity not in (0, 1):
            raise ValueError(f"checkerboard parity must be 0 or 1, got {parity!r}")
        if height * width < 2:
            raise ValueError(f"a checkerboard needs at least 2 pixels, got {height}x{width}")
        self.parity = parity
        self.in_features = self.out_features = channels
        b = checkerboard(height, width, parity)
        self.register_buffer("b", b, persistent=False)
        self.register_buffer("not_b", 1 - b, persistent=False)

    def condition(self, x: Tensor) -> Tensor:
        return x * self.b.to(x.dtype)

    def active(self, x: Tensor) -> Tensor:
        return x

    def restrict(self, h: Tensor) -> Tensor:
        return h * self.not_b.to(h.dtype)

    def merge(self, x: Tensor, active: Tensor, cond: Tensor | None = None) -> Tensor:
        return active

    def extra_repr(self) -> str:
        return f"parity={self.parity}"


class Unmasked(Mask):
    """Every entry is transformed and none conditions: the network sees a zero-channel input (a
    conditional network then reads only its context), so the coupling is an elementwise affine
    map whose scale and shift depend on the context alone. ``(B, C, ...)`` inputs."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_features, self.out_features = 0, channels

    def condition(self, x: Tensor) -> Tensor:
        return x[:, :0]

    def active(self, x: Tensor) -> Tensor:
        return x

    def merge(self, x: Tensor, active: Tensor, cond: Tensor | None = None) -> Tensor:
        return active


class Halves(Mask):
    """Split dimension 1 into ``[:k]`` and ``[k:]`` with ``k = features // 2``.

    ``flip=False`` conditions on the first half and transforms the second; ``flip=True`` the
    reverse. Works for vectors ``(B, D)`` and, channel-wise, for images ``(B, C, H, W)``.
    """

    def __init__(self, features: int, flip: bool = False):
        super().__init__()
        if features < 2:
            raise ValueError(f"a half mask needs at least 2 features/channels, got {features}")
        self.flip = bool(flip)
        self.k = features // 2
        first, second = self.k, features - self.k
        self.in_features, self.out_features = (second, first) if flip else (first, second)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # one split, not two slices: autograd then keeps one node that concatenates the two
        # gradients, instead of scattering each into a zero tensor the size of x and adding
        a, b = torch.split(x, (self.k, x.shape[1] - self.k), dim=1)
        return (b, a) if self.flip else (a, b)

    def condition(self, x: Tensor) -> Tensor:
        return self.split(x)[0]

    def active(self, x: Tensor) -> Tensor:
        return self.split(x)[1]

    def merge(self, x: Tensor, active: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            cond = self.condition(x)
        return torch.cat((active, cond) if self.flip else (cond, active), dim=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, flip={self.flip}"
