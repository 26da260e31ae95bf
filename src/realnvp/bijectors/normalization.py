"""Normalising layers as bijectors: RealNVP's batch norm (paper App. E) and Glow's actnorm.

Both act per channel (dimension 1) on ``(B, C)`` or ``(B, C, H, W)`` tensors, so each channel's
log-scale is counted once per spatial position.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..syncstats import batch_var_mean
from .base import Bijector


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _positions(x: Tensor) -> int:
    """Spatial positions per channel: H*W for images, 1 for vectors."""
    return math.prod(x.shape[2:])


def _view(p: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor shaped to broadcast against x; as is for (B, C) (a reshape would be one more
    autograd node per layer and step, which small vector flows feel)."""
    return p if x.dim() == 2 else p.view(1, -1, *([1] * (x.dim() - 2)))


def _channel_affine(x: Tensor, shift_in: Tensor, log_scale: Tensor, shift_out: Tensor | None,
                    inverse: bool, with_log_det: bool = True) -> tuple[Tensor, Tensor | None]:
    """``y = (x − shift_in)·exp(log_scale) + shift_out`` per channel (or its inverse), with the
    ``(B,)`` log-det ``±Σ_c log_scale_c · H·W`` (``None`` unless ``with_log_det``). Both
    normalising layers are this map; they differ only in where the shifts and the scale come
    from."""
    log_scale = log_scale.to(x.dtype)
    shift_in = _view(shift_in.to(x.dtype), x)
    if inverse:
        if shift_out is not None:
            x = x - _view(shift_out.to(x.dtype), x)
        out = x * _view(torch.exp(-log_scale), x) + shift_in
    else:
        out = (x - shift_in) * _view(torch.exp(log_scale), x)
        if shift_out is not None:
            out = out + _view(shift_out.to(x.dtype), x)
    if not with_log_det:
        return out, None
    log_det = log_scale.sum()
    if _positions(x) != 1:
        log_det = log_det * _positions(x)
    log_det = log_det.to(torch.promote_types(x.dtype, torch.float32)).expand(x.shape[0])
    return out, -log_det if inverse else log_det


def _check_channels(x: Tensor, channels: int, name: str) -> None:
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects (B, {channels}, ...) input, got shape {tuple(x.shape)}"
        )


class BatchNorm(Bijector):
    """Batch normalisation as an invertible layer, its log-det counted.

    ``y = (x − μ) / sqrt(σ² + ε) ⊙ exp(log_gamma) + beta`` per channel. In training μ, σ² are the
    statistics of the current batch (biased variance, over batch and space) and the running
    averages move towards them with weight ``momentum``; in evaluation the running averages are
    used, so an example's output does not depend on the rest of the batch. The log-det,
    ``Σ_c (log_gamma_c − ½ log(σ_c² + ε)) · H·W``, uses whichever statistics were applied.

    Because the running variance averages the same biased variance used in training, a model
    evaluated with ``momentum=1`` reproduces the previous training batch exactly.
    In training mode :meth:`inverse` uses the statistics of the last forward batch (so round trips
    are exact), or the running averages if there was none.

    Defaults follow the authors' code: ``momentum=0.1``, ``eps=1e-4``. Under ``torchrun`` the
    batch statistics are those of the global batch (:mod:`realnvp.syncstats`).

    ``updates_statistics = False`` keeps training mode's batch statistics but records nothing
    (neither running averages nor last-batch statistics): how memory-saving backprop recomputes
    the layer without counting it as a second forward pass.
    """

    updates_statistics: bool = True
    recomputable = True
    records_statistics = True

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-4, affine: bool = True):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(channels), requires_grad=affine)
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=affine)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self._last_stats: tuple[Tensor, Tensor] | None = None

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        var, mean, count = batch_var_mean(x, _reduce_dims(x))
        if count < 2:
            raise ValueError(
                "BatchNorm in training mode needs more than one value per channel "
                f"(got input of shape {tuple(x.shape)}); use a larger batch or eval mode"
            )
        if self.updates_statistics:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
            self._last_stats = (mean.detach(), var.detach())
        return mean, var

    def _log_scale(self, var: Tensor) -> Tensor:
        """Per-channel log of the multiplier applied in the forward direction, shape (C,)."""
        return torch.add(self.log_gamma.to(var.dtype), torch.log(var + self.eps), alpha=-0.5)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels(x, self.channels, "BatchNorm")
        mean, var = self._stats(x)
        return _channel_affine(x, mean, self._log_scale(var), self.beta, inverse=False)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if self.training and self._last_stats is not None:
            return self._inverse_with(y, self._last_stats, with_log_det)
        return self._inverse_with(y, (self.running_mean, self.running_var), with_log_det)

    def _inverse_with(self, y: Tensor, stats: tuple[Tensor, Tensor],
                      with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        """The inverse map with the per-channel ``(mean, var)`` given, each of shape (C,)."""
        _check_channels(y, self.channels, "BatchNorm")
        mean, var = (s.to(y.dtype) for s in stats)
        return _channel_affine(y, mean, self._log_scale(var), self.beta, True, with_log_det)

    # memory-saving backprop (see Bijector): the training-mode inverse needs the statistics of
    # the forward pass that produced y; recomputation switches updates_statistics off

    def forward_state(self) -> tuple[Tensor, Tensor] | None:
        """In training mode the ``(mean, var)`` of the last forward batch (detached, (C,) each)."""
        return self._last_stats if self.training else None

    def invert_from_state(self, y: Tensor, state: tuple[Tensor, Tensor] | None) -> Tensor:
        return self.invert(y) if state is None else self._inverse_with(y, state, False)[0]

    @contextlib.contextmanager
    def statistics_frozen(self) -> Iterator[None]:
        """Batch statistics as usual in the block, but nothing recorded (no tensor is copied)."""
        if not self.updates_statistics:
            yield
            return
        self.updates_statistics = False
        try:
            yield
        finally:
            self.updates_statistics = True

    def extra_repr(self) -> str:
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"


class ActNorm(Bijector):
    """Glow's activation normalisation: ``y = (x + bias) ⊙ exp(log_scale)`` per channel.

    Data-dependent initialisation: the first forward call in training mode sets ``bias`` and
    ``log_scale`` so that the batch has zero mean and unit variance per channel (the statistics
    of the whole global batch under DistributedDataParallel, so that every process starts from
    the same parameters). Log-det
    ``Σ_c log_scale_c · H·W``. The ``initialized`` flag is a buffer, so it travels in state dicts.
    """

    recomputable = True
    records_statistics = True  # the initialisation; frozen by restoring the flag

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        var, mean, _ = batch_var_mean(x, _reduce_dims(x))  # global under DDP: every rank agrees
        self.bias.copy_(-mean)
        self.log_scale.copy_(-0.5 * torch.log(var + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels(x, self.channels, "ActNorm")
        if self.training and not bool(self.initialized):
            self._initialize(x)
        return _channel_affine(x, -self.bias, self.log_scale, None, inverse=False)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        _check_channels(y, self.channels, "ActNorm")
        return _channel_affine(y, -self.bias, self.log_scale, None, True, with_log_det)
