"""The bijector contract shared by every layer.

Direction convention (used everywhere in the package): ``forward`` maps data to latent,
``inverse`` maps latent to data.

- ``y, log_det = layer(x)``: ``log_det`` has shape ``(B,)`` and is ``log|det dy/dx|`` per example.
- ``x, log_det = layer.inverse(y)``: ``log_det`` is ``log|det dx/dy|``, the negative of the
  forward value at the matching point.
- ``x = layer.invert(y)``: the inverse map alone (sampling and decoding need nothing more).

A layer implements :meth:`Bijector.forward` and :meth:`Bijector._inverse`; ``inverse`` and
``invert`` are written once, here, over ``_inverse``.

Log-determinants are in nats and are accumulated in at least float32, even when the layer
runs under a lower-precision autocast.

The rest of the contract is what memory-saving backprop (:mod:`.invertible_backprop`) asks of a
layer, so that it never names a layer type: :attr:`~Bijector.recomputable`,
:attr:`~Bijector.stores_activations`, :meth:`~Bijector.forward_state` and
:meth:`~Bijector.invert_from_state`, :meth:`~Bijector.statistics_frozen` (with
:attr:`~Bijector.records_statistics`) and :meth:`~Bijector.recompute_backward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

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


#: One layer's step of memory-saving backprop: ``(x, ∂L/∂x or None, ∂L/∂params)``.
RecomputeResult = tuple[Tensor, "Tensor | None", Sequence["Tensor | None"]]


class Bijector(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement :meth:`forward` (``x -> (y, log_det)``) and :meth:`_inverse`
    (``y -> (x, log_det or None)``); :meth:`inverse` and :meth:`invert` come from here.
    """

    #: whether memory-saving backprop may recompute the layer's input from its output (the
    #: inverse is exact and cheap enough, and the hooks below describe everything it needs)
    recomputable: bool = False
    #: whether plain autograd would keep large activations for this layer (a coupling's s/t
    #: network): the layers that recomputing saves memory on
    stores_activations: bool = False
    #: whether the layer records something about the batches it sees (running statistics, a
    #: data-dependent initialisation), which :meth:`statistics_frozen` must suspend
    records_statistics: bool = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        """The inverse map ``y -> x`` and, if ``with_log_det``, its ``(B,)`` log-det
        ``log|det dx/dy|``. Without the flag the log-det may be ``None`` (layers whose log-det
        costs operations of its own skip them) or computed anyway (layers whose log-det is free
        may ignore the flag)."""
        raise NotImplementedError  # pragma: no cover - interface

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, (B,) log|det dx/dy|)`` for the latent-side ``y``."""
        return self._inverse(y, True)

    def invert(self, y: Tensor) -> Tensor:
        """``inverse(y)[0]``, without the operations of the log-det where a layer can skip them."""
        return self._inverse(y, False)[0]

    def penalized_parameters(self) -> list[nn.Parameter]:
        """The layer's own parameters (its submodules' not included) that the paper's L2 penalty
        covers; none by default. :meth:`realnvp.Flow.regularized_parameters` collects them."""
        return []

    # --- what memory-saving backprop asks of a layer (see :mod:`.invertible_backprop`) ---------

    def forward_state(self) -> object | None:
        """What the inverse needs from the forward pass that just ran to invert its output exactly
        (a training-mode batch norm: the batch statistics it applied), or ``None``. Memory-saving
        backprop keeps it from the forward pass to :meth:`invert_from_state` in the backward pass,
        however many other forward passes come between."""
        return None

    def invert_from_state(self, y: Tensor, state: object | None) -> Tensor:
        """The input of the forward pass whose :meth:`forward_state` was ``state``, from its
        output ``y``. By default :meth:`invert` (layers whose inverse depends on nothing but their
        parameters)."""
        return self.invert(y)

    def statistics_frozen(self) -> AbstractContextManager[None]:
        """Within the block the layer computes what it computes in its current mode but records
        nothing (a recomputation must not count as a second forward pass). By default the layer's
        own buffers are saved and restored; layers with a cheaper switch override this."""
        return _buffers_restored(self)

    def recompute_backward(self, y: Tensor, g_y: Tensor, g_ld: Tensor, *, params: list[Tensor],
                           freeze: Callable[[], AbstractContextManager[None]], state: object | None,
                           need_x_grad: bool) -> RecomputeResult:
        """One layer's step of memory-saving backprop: reconstruct the input ``x`` from the
        output ``y`` and back-propagate ``(g_y, g_ld)`` (the gradients of the loss with respect to
        ``y`` and the ``(B,)`` log-det) through the layer.

        ``params``: the layer's trainable parameters, in the order the gradients are returned;
        ``freeze()``: a context in which the layer and its submodules record no statistics;
        ``state``: :meth:`forward_state` of the forward pass; ``need_x_grad``: whether ``∂L/∂x``
        is wanted. Returns ``(x, ∂L/∂x or None, [∂L/∂p or None for p in params])``.

        Generic step: the inverse without a graph, then the forward map again with one.
        Couplings override it to share one s/t evaluation between the two.
        """
        with torch.no_grad():
            x = self.invert_from_state(y, state)
        x_leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), freeze():
            y_re, ld = self(x_leaf)
        pairs = [(o, g) for o, g in ((y_re, g_y), (ld, g_ld.to(ld.dtype))) if o.requires_grad]
        res = torch.autograd.grad([o for o, _ in pairs], [x_leaf] + params,
                                  [g for _, g in pairs], allow_unused=True)
        return x_leaf.detach(), (res[0] if need_x_grad else None), res[1:]


@contextlib.contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Within the block ``module``'s own buffers may change; afterwards they hold their values
    from before it again (copied through ``.data``: a restore is not an update that autograd
    should see)."""
    saved = [(b, b.clone()) for b in module.buffers(recurse=False)]
    try:
        yield
    finally:
        for b, value in saved:
            b.data.copy_(value)


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

    @property
    def recomputable(self) -> bool:  # type: ignore[override]
        """Whether memory-saving backprop can run the chain: every layer (nested chains
        flattened) can be recomputed from its output."""
        return all(layer.recomputable for layer in self.layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            # imported here: invertible_backprop builds on this module
            from .invertible_backprop import invertible_forward

            return invertible_forward(self.layers, x)
        return _accumulate(x, self.layers)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if with_log_det:
            return _accumulate(y, (layer.inverse for layer in reversed(self.layers)))
        for layer in reversed(self.layers):
            y = layer.invert(y)
        return y, None


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

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor]:
        return self.bijector(y)  # the log-det comes with the wrapped forward map anyway
