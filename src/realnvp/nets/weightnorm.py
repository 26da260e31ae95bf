"""Weight normalisation (Salimans & Kingma 2016) for convolutions and linear layers.

``w = g · v / ‖v‖`` with one magnitude ``g`` per output unit. The magnitudes are the parameters
the paper's L2 penalty acts on; their name, ``weight_g``, is how models find them.

``scale=False`` (the authors' ``conv_layer(..., scale=False)``) drops the magnitude: ``w = v / ‖v‖``,
unit-norm filters. The authors use it where a batch norm follows (a magnitude there cannot change
the output, and the L2 penalty would only shrink it) and on the s/t network's first convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .evalcache import cached, forget


class _WeightNormMixin:
    channels_last: bool | None = False  # convolutions override this

    def _init_weight_norm(self, init_scale: float, scale: bool = True) -> None:
        # Start with w equal to the default-initialised weight (times init_scale).
        v = self.weight.detach().clone()
        del self.weight
        self.weight_v = nn.Parameter(v)
        if scale:
            self.weight_g = nn.Parameter(init_scale * self._norm(v))
        elif init_scale != 1.0:
            raise ValueError("a weight-normalised layer without magnitude (scale=False) has "
                             f"unit-norm filters; init_scale must be 1, got {init_scale}")
        else:  # a constant unit magnitude, so the fused kernel still does the normalising
            self.register_buffer("_unit_g", torch.ones(v.shape[0], dtype=v.dtype), persistent=False)

    @property
    def magnitude(self) -> Tensor:
        """``g``: the parameter ``weight_g``, or constant ones for a layer without magnitude."""
        g = self._parameters.get("weight_g")
        return self._buffers["_unit_g"] if g is None else g

    def _norm(self, v: Tensor) -> Tensor:
        return v.flatten(1).norm(dim=1)

    def normalized_weight(self) -> Tensor:
        """``g · v / ‖v‖``, one fused operation forward and backward (``torch._weight_norm``, what
        ``torch.nn.utils.weight_norm`` uses) instead of four.

        Without autograd (evaluation, sampling) the result is cached until ``v`` or ``g`` change
        (see :func:`cached`), already cast to the autocast dtype when autocast is on, so
        evaluating many batches neither renormalises nor re-casts every weight each time.
        """
        v, g = self.weight_v, self.magnitude
        if torch.is_grad_enabled() and (v.requires_grad or g.requires_grad):
            forget(self, "_wn_cache")
            return self._compute_weight(v, g)
        return cached(self, "_wn_cache", (v, g), lambda: self._compute_weight(v, g), self.channels_last)

    def _compute_weight(self, v: Tensor, g: Tensor) -> Tensor:
        w = _weight_norm(v, g)
        if w.dim() == 4 and channels_last_on(w.device, self.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        return w


def channels_last_on(device: torch.device, setting: bool | None = None) -> bool:
    """Whether convolutions run channels-last on ``device``: ``setting`` if it is a bool, else
    (``None``, the default) on the CPU only. oneDNN's CPU convolutions are faster channels-last;
    cuDNN's float32 ones (TF32 off) were faster in the default layout on an H200 (38 vs 30 TFLOP/s
    for the benchmark's 128-channel convolution; bfloat16 alike in both), see BENCHMARKS.md."""
    return device.type == "cpu" if setting is None else setting


def _weight_norm(v: Tensor, g: Tensor) -> Tensor:
    """``g · v / ‖v‖`` per output unit; ``g`` has shape ``(out,)``.

    Eager mode hands the 1-D ``g`` to the fused kernel as is (a reshape would cost an autograd
    node per layer and step, which small vector flows feel). Under ``torch.compile`` it is
    reshaped to ``(out, 1, ...)`` first: the traced decomposition of ``torch._weight_norm``
    broadcasts a 1-D ``g`` against the input dimension, which gives wrong shapes, or for a square
    weight wrong values (torch 2.13)."""
    fused = getattr(torch, "_weight_norm", None)
    if fused is not None and not torch.compiler.is_compiling():
        return fused(v, g, 0)
    shape = (-1, *([1] * (v.dim() - 1)))
    if fused is not None:
        return fused(v, g.view(shape), 0)
    return v * (g / v.flatten(1).norm(dim=1)).view(shape)


class WNConv2d(_WeightNormMixin, nn.Conv2d):
    """``nn.Conv2d`` with weight normalisation; ``init_scale`` multiplies the initial weight;
    ``scale=False``: no magnitude (unit-norm filters).

    On the CPU the normalised weight is handed to the convolution in the channels-last memory
    format, which makes the convolution (and so every activation after it) run channels-last:
    measured faster with oneDNN (no reorder of every activation in and out of a blocked layout),
    in float32 and bfloat16 alike; on GPUs the default layout measured faster (see
    :func:`channels_last_on` and BENCHMARKS.md). The parameters themselves keep the default
    layout. The class attribute ``channels_last`` (``None``: by device) can force either layout.
    """

    channels_last: bool | None = None

    def __init__(self, *args, init_scale: float = 1.0, scale: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm(init_scale, scale)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class WNLinear(_WeightNormMixin, nn.Linear):
    """``nn.Linear`` with weight normalisation; ``init_scale`` multiplies the initial weight."""

    def __init__(self, *args, init_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm(init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


def weight_norm_magnitudes(module: nn.Module) -> list[nn.Parameter]:
    """All ``weight_g`` parameters below ``module``."""
    return [p for name, p in module.named_parameters() if name.endswith("weight_g")]


