"""Memory-saving backpropagation through chains of bijectors (Gomez et al. 2017, "The reversible
residual network"; i-RevNet; MemCNN).

A flow's layers are invertible, so the input of a layer never has to be stored for the backward
pass: it can be recomputed from the layer's output with :meth:`~Bijector.inverse`. Plain autograd
keeps every activation of every s/t network alive from the forward pass to the backward pass (for
the paper's CIFAR-10 model at batch 64 that is gigabytes); :func:`invertible_forward` runs a chain
of layers without recording a graph and keeps only the chain's output. In the backward pass it
walks the chain in reverse: for each layer it reconstructs the layer's input from its output,
re-runs that one layer with autograd on, back-propagates through it and frees it. The peak memory
is that of one layer's graph instead of all of them.

This module names no layer type: each layer says what it needs through the hooks of
:class:`~realnvp.bijectors.Bijector` (its :attr:`~Bijector.recomputable` flag, its
:meth:`~Bijector.recompute_backward` step, its :meth:`~Bijector.forward_state` and
:meth:`~Bijector.statistics_frozen`), and the formulas stay in the layers' own modules. The
generic step inverts without a graph and re-runs the forward map with one. A coupling's step
(:meth:`realnvp.bijectors.AffineCoupling.recompute_backward`) shares one evaluation of the s/t
network between the two: the network's input ``condition(x)`` equals ``condition(y)`` bit for
bit, so its ``s`` and ``t`` give the input ``x`` (no graph) and then the output again (graph). A
training step therefore costs one extra forward pass of the s/t networks (~4/3 of plain autograd's
arithmetic), less the last coupling of each chain (the last layer that
:attr:`~Bijector.stores_activations`), which is never recomputed: it runs under ordinary autograd.

Batch statistics: every batch norm in a recomputed layer (the :class:`BatchNorm` bijector and the
``nn.BatchNorm2d`` layers in the s/t networks) uses the statistics of the recomputed batch, which
equals the forward batch up to the round-off of the inverse, and the running averages are saved
before each recompute and restored after it, so they are updated exactly once per step, as with
plain autograd. The :class:`BatchNorm` bijector's training-mode inverse uses the batch statistics
recorded during this chain's own forward pass (its :meth:`~Bijector.forward_state`), not whatever
batch came last.

Dropout: a layer whose s/t network has active dropout draws its masks from the random number
generator; the generator's state before the layer's forward pass is kept and restored around its
recomputation (as ``torch.utils.checkpoint`` does), so the inverse and the re-run forward pass
use the forward pass's masks, and the generator ends where the forward pass left it.

Gradients agree with plain autograd's to round-off (checked in float64 in the tests); parameters
and the chain's input both get gradients. Autocast (bf16) is honoured: the backward re-enters the
autocast state of the forward pass.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .base import Bijector, Sequential, zero_log_det

#: ``torch.nn`` batch norms (in s/t networks): frozen by switching ``track_running_stats`` off
_TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: other ``torch.nn`` norms that may keep running statistics: frozen by restoring their buffers
_TORCH_OTHER_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def flatten(layers: Sequence[nn.Module]) -> list[Bijector]:
    """Nested :class:`~realnvp.bijectors.Sequential` chains, flattened into one list of layers."""
    out: list[Bijector] = []
    for layer in layers:
        if isinstance(layer, Sequential):
            out += flatten(list(layer.layers))
        else:
            out.append(layer)
    return out


def supports(layers: Sequence[nn.Module]) -> bool:
    """Whether every layer of the (flattened) chain can be recomputed from its output."""
    return all(getattr(m, "recomputable", False) for m in flatten(layers))


def statistics_modules(module: nn.Module) -> list[nn.Module]:
    """The modules below ``module`` (itself included) that keep statistics of the batches they
    see: bijectors that :attr:`~Bijector.records_statistics` (batch norm, actnorm) and
    ``torch.nn``'s batch and instance norms."""
    torch_norms = _TORCH_BATCH_NORMS + _TORCH_OTHER_NORMS
    return [m for m in module.modules()
            if (isinstance(m, Bijector) and m.records_statistics) or isinstance(m, torch_norms)]


@contextlib.contextmanager
def frozen_statistics(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, ``modules`` (from :func:`statistics_modules`) normalise as they would in
    their current mode but record nothing: a recomputation must not count as a second forward
    pass. Bijectors freeze themselves (:meth:`~Bijector.statistics_frozen`; batch norm switches
    ``updates_statistics`` off, no tensor is copied); ``torch.nn`` batch norms have their
    ``track_running_stats`` switched off; other ``torch.nn`` norms have their buffers saved and
    restored. Every switch is back afterwards, also after an error."""
    with contextlib.ExitStack() as undo:
        for m in modules:
            if isinstance(m, Bijector):
                undo.enter_context(m.statistics_frozen())
            elif isinstance(m, _TORCH_BATCH_NORMS):
                # in training mode a torch batch norm without running statistics normalises with
                # the batch's, exactly as it does with them, and updates nothing; in evaluation
                # mode it updates nothing anyway
                if m.training and m.track_running_stats:
                    m.track_running_stats = False
                    undo.callback(setattr, m, "track_running_stats", True)
            else:
                for b in m.buffers(recurse=False):
                    # through .data: a restore is not an update that autograd should see
                    undo.callback(b.data.copy_, b.clone())
        yield


def _random_state(layer: nn.Module, device: torch.device) -> tuple[Tensor, ...] | None:
    """The generator state that layer ``layer``'s forward pass will draw from, if it draws
    (active dropout somewhere below it): the CPU generator's and, on a GPU, that device's."""
    if not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               for m in layer.modules()):
        return None
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    return (torch.get_rng_state(),)


@contextlib.contextmanager
def _replayed_randomness(state: tuple[Tensor, ...] | None, device: torch.device) -> Iterator[None]:
    """Within the block the generators are in ``state`` (from :func:`_random_state`); afterwards
    they are back where they were."""
    if state is None:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(state[0])
        if cuda:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _grad_params(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


class _InvertibleChain(torch.autograd.Function):
    """Runs ``layers`` without a graph; recomputes each layer's input from its output in backward.

    ``apply(x, layers, layer_params, layer_stats, *params)``: ``layer_params[i]`` and
    ``layer_stats[i]`` are layer i's trainable parameters and :func:`statistics_modules`, found
    once per forward pass (walking every s/t network's modules again for each layer in the
    backward pass is time that small models and GPUs notice); ``params`` are all of those
    parameters, passed so that autograd routes their gradients through this function.
    """

    @staticmethod
    def forward(ctx, x: Tensor, layers: list[Bijector], layer_params: list[list[Tensor]],
                layer_stats: list[list[nn.Module]], *params: Tensor):
        states, randomness = [], []
        total = zero_log_det(x)
        for layer in layers:
            randomness.append(_random_state(layer, x.device))
            x, log_det = layer(x)
            states.append(layer.forward_state())
            total = total + log_det
        device_type = x.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.layers, ctx.states, ctx.randomness = layers, states, randomness
        ctx.layer_params, ctx.layer_stats = layer_params, layer_stats
        ctx.save_for_backward(x)
        return x, total

    @staticmethod
    def backward(ctx, g_y: Tensor, g_ld: Tensor):
        (y,) = ctx.saved_tensors
        layers, states = ctx.layers, ctx.states
        params_in = ctx.needs_input_grad[4:]
        device_type, enabled, dtype = ctx.autocast
        grads: dict[int, Tensor] = {}
        if g_y is None:
            g_y = torch.zeros_like(y)
        if g_ld is None:
            g_ld = zero_log_det(y)
        y = y.detach()
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for i in reversed(range(len(layers))):
                params, stats = ctx.layer_params[i], ctx.layer_stats[i]
                with _replayed_randomness(ctx.randomness[i], y.device):
                    y, g_y, g_params = layers[i].recompute_backward(
                        y, g_y, g_ld, params=params, freeze=functools.partial(frozen_statistics, stats),
                        state=states[i], need_x_grad=i > 0 or ctx.needs_input_grad[0])
                for p, g in zip(params, g_params, strict=True):
                    if g is not None:
                        grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
        params = [p for ps in ctx.layer_params for p in ps]
        out = [grads.get(id(p)) if need else None for p, need in zip(params, params_in, strict=True)]
        return (g_y if ctx.needs_input_grad[0] else None), None, None, None, *out


def invertible_forward(layers: Sequence[nn.Module], x: Tensor, keep_last: bool = True
                       ) -> tuple[Tensor, Tensor]:
    """Apply a chain of bijectors as :class:`~realnvp.bijectors.Sequential` would, but with
    memory-saving backpropagation (see the module docstring).

    With ``keep_last`` the chain's last coupling (the last layer that
    :attr:`~realnvp.bijectors.Bijector.stores_activations`) and everything after it run under plain
    autograd: the backward pass starts with them, so recomputing them would buy no memory.
    Falls back to plain evaluation when no gradient is being recorded.
    """
    layers = flatten(layers)
    if not supports(layers):
        bad = sorted({type(m).__name__ for m in layers if not getattr(m, "recomputable", False)})
        raise TypeError(f"memory-saving backprop cannot recompute layers of type {', '.join(bad)}")
    split = len(layers)
    if keep_last:
        heavy = [i for i, m in enumerate(layers) if m.stores_activations]
        split = heavy[-1] if heavy else len(layers)
    head, tail = layers[:split], layers[split:]
    total = zero_log_det(x)
    layer_params = [_grad_params(layer) for layer in head]
    params = [p for ps in layer_params for p in ps]
    recording = torch.is_grad_enabled() and (x.requires_grad or bool(params))
    if head and recording:
        layer_stats = [statistics_modules(layer) for layer in head]
        x, total = _InvertibleChain.apply(x, head, layer_params, layer_stats, *params)
    else:
        tail = head + tail
    for layer in tail:
        x, log_det = layer(x)
        total = total + log_det
    return x, total


__all__ = ["flatten", "frozen_statistics", "invertible_forward", "statistics_modules",
           "supports"]
