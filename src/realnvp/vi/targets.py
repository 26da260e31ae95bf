"""Unnormalised target densities ``log p̃(z)`` for variational inference, and their validation.

A target is any callable ``log_target(z: (B, D)) -> (B,)`` returning the log of an unnormalised
density. The built-in ones (:data:`TARGETS`, :func:`get_target`) are modules with ``dim`` and, for
2-D ones, ``bounds`` (a box holding nearly all the mass: the quadrature grid and the pictures):

- ``u1``–``u4``: the energies of Rezende & Mohamed (2015), Table 1, ``log p̃ = −U(z)``.
  ``U₂``–``U₄`` do not decay along ``z₁`` (they are periodic in it), so as written they are not
  normalisable on R²: R&M only show them on ``[−4, 4]²``. Here they carry a soft wall outside
  ``|z₁| ≤ 4``, ``½((|z₁| − 4)₊ / 0.5)²`` (zero inside the box, so the density there is R&M's to a
  constant) to make them proper distributions whose KL is finite.
- ``banana``: ``z₁ ~ N(0, 2²)``, ``z₂ | z₁ ~ N(b(z₁² − 4), 1)``, normalised (``log Z = 0``).
- ``funnel``: Neal's funnel, ``v ~ N(0, 3²)``, ``xᵢ | v ~ N(0, eᵛ)``, normalised; any ``dim ≥ 2``.
- ``mixture``: eight equal-weight Gaussians (σ = 0.5) on a circle of radius 3, normalised.
- :class:`Gaussian`: ``N(μ, diag σ²)`` times ``exp(log_z)``: a target with a known normaliser.

:func:`checked` wraps any callable so that a result of the wrong shape or dtype, or one holding
NaN (``-inf``, zero density, is allowed; ``+inf`` is not), is one clear :class:`TargetError`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..normal import normal_log_prob

LogTarget = Callable[[Tensor], Tensor]


class TargetError(ValueError):
    """A target log-density returned something that cannot be used."""


class Target(nn.Module):
    """A built-in target: ``forward(z) = log p̃(z)``, ``(B, dim) -> (B,)``; ``log_z`` the log
    normaliser where it is known in closed form (else ``None``); ``bounds`` ``(x0, x1, y0, y1)``
    for 2-D targets."""

    dim: int = 2
    log_z: float | None = None
    bounds: tuple[float, float, float, float] | None = None
    name: str = "target"


def _gauss(x: Tensor, s: float) -> Tensor:
    return -0.5 * (x / s).pow(2)


def _wall(z1: Tensor, half_width: float = 4.0, softness: float = 0.5) -> Tensor:
    return 0.5 * ((z1.abs() - half_width).clamp_min(0) / softness).pow(2)


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


class U1(Target):
    """R&M's ``U₁``: a ring of radius 2 with two modes on the ``z₁`` axis."""

    name, bounds = "u1", (-4.0, 4.0, -4.0, 4.0)

    def forward(self, z: Tensor) -> Tensor:
        z1 = z[:, 0]
        ring = _gauss(z.norm(dim=1) - 2, 0.4)
        return ring + torch.logaddexp(_gauss(z1 - 2, 0.6), _gauss(z1 + 2, 0.6))


class U2(Target):
    """R&M's ``U₂``: a sine wave (soft wall outside ``|z₁| ≤ 4``)."""

    name, bounds = "u2", (-5.5, 5.5, -4.0, 4.0)

    def forward(self, z: Tensor) -> Tensor:
        z1, z2 = z[:, 0], z[:, 1]
        return _gauss(z2 - _w1(z1), 0.4) - _wall(z1)


class U3(Target):
    """R&M's ``U₃``: the sine wave and a second branch below it around ``z₁ = 1``."""

    name, bounds = "u3", (-5.5, 5.5, -5.0, 4.0)

    def forward(self, z: Tensor) -> Tensor:
        z1, z2 = z[:, 0], z[:, 1]
        w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6).pow(2))
        return torch.logaddexp(_gauss(z2 - _w1(z1), 0.35), _gauss(z2 - _w1(z1) + w2, 0.35)) - _wall(z1)


class U4(Target):
    """R&M's ``U₄``: the sine wave and a second one shifted down by a sigmoid step."""

    name, bounds = "u4", (-5.5, 5.5, -5.0, 4.0)

    def forward(self, z: Tensor) -> Tensor:
        z1, z2 = z[:, 0], z[:, 1]
        w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
        return torch.logaddexp(_gauss(z2 - _w1(z1), 0.4), _gauss(z2 - _w1(z1) + w3, 0.35)) - _wall(z1)


class Banana(Target):
    """``z₁ ~ N(0, 2²)``, ``z₂ | z₁ ~ N(b·(z₁² − 4), 1)``; normalised (``log Z = 0``)."""

    name, log_z, bounds = "banana", 0.0, (-7.0, 7.0, -6.0, 14.0)

    def __init__(self, b: float = 0.5):
        super().__init__()
        self.b = b

    def forward(self, z: Tensor) -> Tensor:
        z1, z2 = z[:, 0], z[:, 1]
        return normal_log_prob(z1, log_std=math.log(2.0)) + normal_log_prob(z2, self.b * (z1.pow(2) - 4))


class Funnel(Target):
    """Neal's funnel on ``dim`` features: ``v = z₁ ~ N(0, σ²)``, ``zᵢ | v ~ N(0, eᵛ)``;
    normalised."""

    name, log_z = "funnel", 0.0

    def __init__(self, dim: int = 2, scale: float = 3.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"the funnel needs dim >= 2, got {dim}")
        self.dim, self.scale = dim, scale
        self.bounds = (-9.0, 9.0, -12.0, 12.0) if dim == 2 else None

    def forward(self, z: Tensor) -> Tensor:
        v, x = z[:, 0], z[:, 1:]
        lp_v = normal_log_prob(v, log_std=math.log(self.scale))
        return lp_v + normal_log_prob(x, log_std=0.5 * v.unsqueeze(1)).sum(dim=1)


class Mixture(Target):
    """``components`` equal-weight Gaussians of standard deviation ``std`` on a circle of radius
    ``radius``; normalised."""

    name, log_z, bounds = "mixture", 0.0, (-5.0, 5.0, -5.0, 5.0)

    def __init__(self, components: int = 8, radius: float = 3.0, std: float = 0.5):
        super().__init__()
        angles = torch.arange(components) * (2 * math.pi / components)
        self.register_buffer("means", radius * torch.stack([angles.cos(), angles.sin()], dim=1))
        self.std = std

    def forward(self, z: Tensor) -> Tensor:
        comp = normal_log_prob(z.unsqueeze(1), self.means.to(z), math.log(self.std)).sum(dim=2)
        return torch.logsumexp(comp, dim=1) - math.log(self.means.shape[0])


class Gaussian(Target):
    """``exp(log_z)·N(z; mean, diag std²)``: a target whose normaliser is ``log_z``."""

    name = "gaussian"

    def __init__(self, mean: Tensor, std: Tensor, log_z: float = 0.0):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.reshape(-1))
        self.register_buffer("std", std.expand_as(mean).reshape(-1).clone())
        self.dim, self.log_z = self.mean.numel(), float(log_z)
        if self.dim == 2:
            m, s = self.mean.tolist(), self.std.tolist()
            self.bounds = (m[0] - 5 * s[0], m[0] + 5 * s[0], m[1] - 5 * s[1], m[1] + 5 * s[1])

    def forward(self, z: Tensor) -> Tensor:
        mean, std = self.mean.to(z), self.std.to(z)
        return normal_log_prob(z, mean, std.log()).sum(dim=1) + self.log_z


#: The built-in targets by name.
TARGETS: dict[str, Callable[[], Target]] = {
    "u1": U1, "u2": U2, "u3": U3, "u4": U4, "banana": Banana, "funnel": Funnel, "mixture": Mixture,
}


def get_target(name: str, dim: int | None = None) -> Target:
    """The built-in target ``name`` (one of :data:`TARGETS`), on ``dim`` features when given: the
    funnel takes any ``dim ≥ 2``, the other targets are 2-D (another ``dim`` is a
    :class:`TargetError`)."""
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    if dim is not None and "dim" in inspect.signature(TARGETS[name]).parameters:
        if dim < 2:
            raise TargetError(f"the {name} target needs dim >= 2, got {dim}")
        return TARGETS[name](dim=dim)
    target = TARGETS[name]()
    if dim is not None and dim != target.dim:
        raise TargetError(f"the {name} target is a density on {target.dim} features, not {dim} "
                          "(the funnel takes any dim >= 2)")
    return target


class checked:  # noqa: N801 - used like a function: checked(log_target)
    """``log_target`` with its results checked: a ``(B,)`` floating tensor with no NaN and no
    ``+inf``, else one :class:`TargetError` saying what came back.

    A plain object, not a module: an objective holding it does not make the target's parameters
    (if it has any) trainable, nor its buffers part of a checkpoint."""

    def __init__(self, log_target: LogTarget):
        if isinstance(log_target, checked):
            log_target = log_target.log_target
        if not callable(log_target):
            raise TargetError(f"a target must be a callable log_target(z) -> (B,), got "
                              f"{type(log_target).__name__}")
        self.log_target = log_target
        for key in ("dim", "log_z", "bounds", "name"):
            if hasattr(log_target, key):
                setattr(self, key, getattr(log_target, key))

    def to(self, device) -> checked:
        """Move a module target's buffers to ``device``; returns ``self``."""
        if isinstance(self.log_target, nn.Module):
            self.log_target.to(device)
        return self

    def __call__(self, z: Tensor) -> Tensor:
        out = self.log_target(z)
        what = getattr(self, "name", None) or getattr(self.log_target, "__name__", "the target")
        if not isinstance(out, Tensor):
            raise TargetError(f"{what} returned {type(out).__name__}, expected a tensor of shape "
                              f"({z.shape[0]},): one log-density per sample")
        if tuple(out.shape) != (z.shape[0],):
            raise TargetError(f"{what} returned shape {tuple(out.shape)} for a batch of shape "
                              f"{tuple(z.shape)}; expected ({z.shape[0]},): one log-density per sample")
        if not out.is_floating_point():
            raise TargetError(f"{what} returned dtype {out.dtype}; expected a floating-point log-density")
        bad = torch.isnan(out) | (out == math.inf)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise TargetError(f"{what} returned {out[i].item()} at {z[i].detach().tolist()} "
                              f"({int(bad.sum())} of {out.numel()} samples): a log-density must be "
                              f"a number or -inf")
        return out
