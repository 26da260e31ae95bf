"""A run's checkpoints: everything exact resume needs, in and out of ``checkpoint`` files."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import checkpoint
from ..runs import load_state
from .state import State


def _modules(ctx) -> dict:
    return {"model": ctx.model, "ema": ctx.ema.model if ctx.ema is not None else None,
            "objective": ctx.objective}


def contents(ctx) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a checkpoint of ``ctx``: weights, moving average, the objective's
    own modules, Adam's moments, every RNG; progress and versions as JSON."""
    tensors = {}
    for prefix, module in _modules(ctx).items():
        if module is not None:
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    opt_tensors, opt_meta = checkpoint.optimizer_to_tensors(ctx.optimizer)
    rng_tensors, rng_meta = checkpoint.rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    meta = {"state": ctx.state.to_dict(), "optimizer": opt_meta, "rng": rng_meta,
            "torch": torch.__version__, "time": time.time()}
    return tensors, meta


def save(ctx, best: bool) -> None:
    """Write ``last`` (and first ``best``, if this epoch improved on it); rank 0 only."""
    if not ctx.main:
        return
    tensors, meta = contents(ctx)
    # best before last: a crash in between redoes the epoch, which rewrites best
    for name in (("best", "last") if best else ("last",)):
        path = ctx.checkpoint_dir / f"{name}.safetensors"
        ctx.faults.before_checkpoint(ctx, path)
        checkpoint.save(path, tensors, meta)


def restore(ctx, path: Path) -> State:
    """Load ``path`` (or its previous file) into ``ctx``'s modules, optimizer and RNGs; returns
    the saved progress. A checkpoint without an ``ema.`` part fills the average with the model."""
    tensors, meta, source = checkpoint.load_with_fallback(path, warn=ctx.log)
    load_state(ctx.model, tensors, "model.", source)
    if ctx.ema is not None:
        has_ema = any(k.startswith("ema.") for k in tensors)
        load_state(ctx.ema.model, tensors, "ema." if has_ema else "model.", source)
    load_state(ctx.objective, tensors, "objective.", source)
    checkpoint.optimizer_from_tensors(ctx.optimizer, tensors, meta["optimizer"])
    checkpoint.set_rng_state(tensors, meta["rng"])
    return State.from_dict(meta["state"])


def load_weights(ctx, model, path: Path) -> State:
    """The weights that ``ctx`` evaluates (the moving average, if the run keeps one) from
    checkpoint ``path`` into ``model``; returns the checkpoint's progress."""
    tensors, meta, source = checkpoint.load_with_fallback(path, warn=ctx.log)
    has_ema = ctx.ema is not None and any(k.startswith("ema.") for k in tensors)
    load_state(model, tensors, "ema." if has_ema else "model.", source)
    return State.from_dict(meta["state"])
