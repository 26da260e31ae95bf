"""Weights derived from parameters (normalised, folded), computed once for evaluation and reused."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def cached(module: nn.Module, name: str, inputs: tuple[Tensor, ...], compute, *extra):
    """``compute()`` (a tensor or a tuple of tensors, computed without autograd), stored on
    ``module`` under ``name`` and reused until one of ``inputs`` changes. Under autocast the
    result is kept in the autocast dtype, the cast the convolution or matmul would otherwise
    repeat on every call. For derived weights in evaluation; the caller makes sure no gradient
    is wanted.

    A change is seen by the inputs' version counters (bumped by in-place edits and
    ``load_state_dict``) and storage (``.to()``), but fused optimizers (``Adam(fused=True)``)
    update parameters without bumping versions, and batch norm updates its running averages
    inside its kernel: so callers also :func:`forget` the cache on every training-mode or
    gradient-recording forward pass, which any such update follows.
    """
    if torch.compiler.is_compiling():  # traced (compile, export): the graph holds the derivation
        with torch.no_grad():
            return compute()
    ref = inputs[0]
    cast = None
    if ref.dtype == torch.float32 and torch.is_autocast_enabled(ref.device.type):  # as autocast
        cast = torch.get_autocast_dtype(ref.device.type)
    key = (tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in inputs), cast, extra)
    hit = module.__dict__.get(name)
    if hit is not None and hit[0] == key:
        # an inference-mode tensor must not reach code that may save it for backward
        first = hit[1][0] if isinstance(hit[1], tuple) else hit[1]
        if not first.is_inference() or torch.is_inference_mode_enabled():
            return hit[1]
    with torch.no_grad():
        out = compute()
        if cast is not None:
            out = tuple(t.to(cast) for t in out) if isinstance(out, tuple) else out.to(cast)
    module.__dict__[name] = (key, out)
    return out


def forget(module: nn.Module, name: str) -> None:
    """Drop what :func:`cached` stored on ``module`` under ``name``."""
    module.__dict__.pop(name, None)
