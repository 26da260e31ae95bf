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

For a coupling layer, the inverse and the re-run share one evaluation of the s/t network: the
network's input ``condition(x)`` equals ``condition(y)`` bit for bit (a coupling passes its
conditioning part through unchanged), so the network runs once, with autograd on, on
``condition(y)``; its ``s`` and ``t`` give the input ``x`` (no graph) and then the output again
(graph), and one call to :func:`torch.autograd.grad` gives the gradients. A training step
therefore costs one extra forward pass of the s/t networks (~4/3 of plain autograd's arithmetic),
less the last coupling of each chain, which is never recomputed: it runs under ordinary autograd.

Batch statistics: every batch norm in a recomputed layer (the :class:`BatchNorm` bijector and the
``nn.BatchNorm2d`` layers in the s/t networks) uses the statistics of the recomputed batch, which
equals the forward batch up to the round-off of the inverse, and the running averages are saved
before each recompute and restored after it, so they are updated exactly once per step, as with
plain autograd. The :class:`BatchNorm` bijector's training-mode inverse uses the batch statistics
recorded during this chain's own forward pass (not whatever batch came last).

Gradients agree with plain autograd's to round-off (checked in float64 in the tests); parameters
and the chain's input both get gradients. Autocast (bf16) is honoured: the backward re-enters the
autocast state of the forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .base import Bijector, sum_except_batch, zero_log_det
from .coupling import _Coupling
from .linear import Invertible1x1Conv
from .normalization import ActNorm, BatchNorm
from .preprocessing import Logit
from .squeeze import Squeeze

#: Layers that :func:`invertible_forward` knows how to recompute from their outputs. Couplings
#: get the fused path (one s/t evaluation); the others are cheap and elementwise or per-channel,
#: and are recomputed generically (inverse without graph, then forward with graph).
SUPPORTED = (_Coupling, BatchNorm, ActNorm, Squeeze, Invertible1x1Conv, Logit)


def flatten(layers: Sequence[nn.Module]) -> list[Bijector]:
    """Nested :class:`~realnvp.bijectors.Sequential` chains, flattened into one list of layers."""
    from .base import Sequential

    out: list[Bijector] = []
    for layer in layers:
        if isinstance(layer, Sequential):
            out += flatten(list(layer.layers))
        else:
            out.append(layer)
    return out


def supports(layers: Sequence[nn.Module]) -> bool:
    """Whether every layer of the (flattened) chain can be recomputed from its output."""
    return all(isinstance(m, SUPPORTED) for m in flatten(layers))


def statistics_modules(module: nn.Module) -> list[nn.Module]:
    """The modules below ``module`` (itself included) that keep statistics of the batches they
    see: batch norms (the bijector and ``torch.nn``'s), other ``torch.nn`` norms, actnorm."""
    stateful = (nn.modules.batchnorm._NormBase, BatchNorm, ActNorm)
    return [m for m in module.modules() if isinstance(m, stateful)]


@contextlib.contextmanager
def frozen_statistics(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, ``modules`` (from :func:`statistics_modules`) normalise as they would in
    their current mode but record nothing: a recomputation must not count as a second forward
    pass. Batch norms are switched (``BatchNorm.updates_statistics``, ``torch.nn`` batch norms'
    ``track_running_stats``): no tensor is copied. Any other stateful module has its buffers
    saved and restored."""
    switched: list[tuple[nn.Module, str]] = []
    saved: list[tuple[Tensor, Tensor]] = []
    for m in modules:
        if isinstance(m, BatchNorm):
            if m.updates_statistics:
                m.updates_statistics = False
                switched.append((m, "updates_statistics"))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            # in training mode a torch batch norm without running statistics normalises with
            # the batch's, exactly as it does with them, and updates nothing; in evaluation
            # mode it updates nothing anyway
            if m.training and m.track_running_stats:
                m.track_running_stats = False
                switched.append((m, "track_running_stats"))
        else:
            saved += [(b, b.clone()) for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        for m, flag in switched:
            setattr(m, flag, True)
        for b, value in saved:
            # through .data: a restore is not an update that autograd should see
            b.data.copy_(value)


def _state(layer: Bijector):
    """What a layer's training-mode inverse needs from its own forward pass."""
    if isinstance(layer, BatchNorm) and layer.training:
        return layer._last_stats
    return None


def _grad_params(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


def _coupling_backward(layer: _Coupling, params: list[Tensor], stats: list[nn.Module], y: Tensor,
                       g_y: Tensor, g_ld: Tensor, need_x_grad: bool):
    """Reconstruct a coupling's input from its output ``y`` and back-propagate ``(g_y, g_ld)``
    through it with a single evaluation of the s/t network (``params``: the layer's trainable
    parameters; ``stats``: its :func:`statistics_modules`)."""
    mask = layer.mask
    with torch.enable_grad():
        cond = mask.condition(y).detach().requires_grad_(need_x_grad)
        with frozen_statistics(stats):
            s, t = layer.scale_and_shift(cond, y)
        with torch.no_grad():
            a_y = mask.active(y)
            a_x = a_y - t if s is None else (a_y - t) * torch.exp(-s)
            x = mask.merge(y, a_x)
        x_leaf = x.detach().requires_grad_(need_x_grad)
        a_x = mask.active(x_leaf)
        if s is None:
            out = [mask.merge(x_leaf, a_x + t)]
            grads = [g_y]
        else:
            log_det = sum_except_batch(s)
            out = [mask.merge(x_leaf, a_x * torch.exp(s) + t), log_det]
            grads = [g_y, g_ld.to(log_det.dtype)]
        inputs = ([x_leaf, cond] if need_x_grad else []) + params
        res = torch.autograd.grad(out, inputs, grads, allow_unused=True)
    if need_x_grad:
        g_x, g_cond, g_params = res[0], res[1], res[2:]
        if g_cond is not None:
            with torch.enable_grad():
                x2 = x.detach().requires_grad_(True)
                (g_through_cond,) = torch.autograd.grad(mask.condition(x2), x2, g_cond)
            g_x = g_through_cond if g_x is None else g_x + g_through_cond
    else:
        g_x, g_params = None, res
    return x.detach(), g_x, g_params


def _generic_backward(layer: Bijector, params: list[Tensor], stats: list[nn.Module], state,
                      y: Tensor, g_y: Tensor, g_ld: Tensor, need_x_grad: bool):
    """Reconstruct any supported layer's input with its inverse, then re-run it with autograd."""
    with torch.no_grad():
        if isinstance(layer, BatchNorm) and state is not None:
            saved, layer._last_stats = layer._last_stats, state
            try:
                x, _ = layer.inverse(y)
            finally:
                layer._last_stats = saved
        else:
            x, _ = layer.inverse(y)
    x_leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), frozen_statistics(stats):
        y_re, ld = layer(x_leaf)
    pairs = [(o, g) for o, g in ((y_re, g_y), (ld, g_ld.to(ld.dtype))) if o.requires_grad]
    res = torch.autograd.grad([o for o, _ in pairs], [x_leaf] + params, [g for _, g in pairs],
                              allow_unused=True)
    return x_leaf.detach(), (res[0] if need_x_grad else None), res[1:]


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
        states = []
        total = zero_log_det(x)
        for layer in layers:
            x, log_det = layer(x)
            states.append(_state(layer))
            total = total + log_det
        device_type = x.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.layers, ctx.states = layers, states
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
                layer, params, stats = layers[i], ctx.layer_params[i], ctx.layer_stats[i]
                need_x_grad = i > 0 or ctx.needs_input_grad[0]
                if isinstance(layer, _Coupling):
                    y, g_y, g_params = _coupling_backward(layer, params, stats, y, g_y, g_ld, need_x_grad)
                else:
                    y, g_y, g_params = _generic_backward(layer, params, stats, states[i], y, g_y, g_ld,
                                                         need_x_grad)
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

    With ``keep_last`` the chain's last coupling and everything after it run under plain autograd:
    the backward pass starts with them, so recomputing them would buy no memory.
    Falls back to plain evaluation when no gradient is being recorded.
    """
    layers = flatten(layers)
    if not supports(layers):
        bad = sorted({type(m).__name__ for m in layers if not isinstance(m, SUPPORTED)})
        raise TypeError(f"memory-saving backprop cannot recompute layers of type {', '.join(bad)}")
    split = len(layers)
    if keep_last:
        couplings = [i for i, m in enumerate(layers) if isinstance(m, _Coupling)]
        split = couplings[-1] if couplings else len(layers)
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


__all__ = ["SUPPORTED", "flatten", "frozen_statistics", "invertible_forward", "statistics_modules",
           "supports"]
