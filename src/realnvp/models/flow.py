"""A normalizing flow as a distribution: a bijector from data to latent plus a normal prior.

Follows ``torch.distributions`` conventions: :meth:`Flow.log_prob`, :meth:`Flow.sample`,
:meth:`Flow.rsample`. Log-probabilities are in nats, per example.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from ..bijectors import Bijector, Sequential
from ..nets import weight_norm_magnitudes
from ..nets.context import ContextSlot
from ..normal import standard_normal_log_prob


class Flow(nn.Module):
    """``bijector`` maps data of shape ``(B, *event_shape)`` to a ``(B, D)`` latent with a
    standard-normal prior (or a learned ``base`` density).

    Args:
        bijector: data → latent; must return a flat ``(B, D)`` latent.
        event_shape: shape of one example, e.g. ``(C, H, W)`` or ``(D,)``.
        support: ``(low, high)`` bounds the data must lie in (inclusive), or ``None``.
        validate_args: check shapes, finiteness and support of inputs (a ``ValueError`` naming
            the problem instead of NaNs or a deep traceback). One extra reduction per call.
        context: for a conditional flow ``p(x | c)``, the :class:`~realnvp.nets.context.ContextSlot`
            its networks read (see :mod:`realnvp.nets.context`); every method then takes a
            ``(B, k)`` ``context`` (``sample``: ``(n, k)`` or one ``(k,)`` for all ``n``), and
            refuses a call without one. ``None``: unconditional, and a context is refused.
        base: the latent's density, an ``nn.Module`` with ``log_prob(z) -> (B,)`` and
            ``sample(n, generator, temperature) -> (n, D)`` (e.g.
            :class:`~realnvp.models.mog.MADEMoG`, "MAF MoG", whose temperature scales its
            components' standard deviations); ``None``: ``N(0, I)``. A base whose
            ``reparametrised`` is false has no :meth:`rsample` / :meth:`rsample_and_log_prob`.
    """

    def __init__(
        self,
        bijector: Bijector,
        event_shape: tuple[int, ...],
        support: tuple[float, float] | None = None,
        validate_args: bool = True,
        context: ContextSlot | None = None,
        base: nn.Module | None = None,
    ):
        super().__init__()
        self.context_slot = context
        self.base = base
        self.bijector = bijector
        self.event_shape = tuple(event_shape)
        self.support = support
        self.validate_args = validate_args

    @property
    def context_features(self) -> int:
        """k, the features of the context of a conditional flow; 0 for an unconditional one."""
        return self.context_slot.features if self.context_slot is not None else 0

    def _condition(self, context: Tensor | None, batch: int, expand: bool = False) -> None:
        """Check ``context`` against the model and the batch and put it in the slot."""
        k = self.context_features
        if context is None:
            if k:
                raise ValueError(f"this flow is conditional: pass a context of shape (B, {k})")
            return
        if not k:
            raise ValueError("this flow is unconditional: it takes no context")
        if not isinstance(context, Tensor) or not context.is_floating_point():
            raise ValueError("the context must be a floating-point torch.Tensor (labels: one_hot)")
        if expand and context.dim() == 1 and context.shape[0] == k:
            context = context.expand(batch, k)
        if context.dim() != 2 or context.shape != (batch, k):
            raise ValueError(f"expected a context of shape ({batch}, {k}), got {tuple(context.shape)}")
        device, dtype = self._reference()
        if device is not None and context.device != device:
            raise ValueError(f"context is on {context.device} but the model is on {device}")
        if self.validate_args and not bool(torch.isfinite(context).all()):
            raise ValueError("context contains NaN or infinite values")
        self.context_slot.value = context if dtype is None else context.to(dtype)

    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one example (and of its latent)."""
        return math.prod(self.event_shape)

    def _reference(self) -> tuple[torch.device | None, torch.dtype | None]:
        """Device and dtype of the model's first floating parameter or buffer; ``None`` for a
        model that has none (it then accepts any)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
        return None, None

    def _validate(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise ValueError(
                f"expected input of shape (B, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("got an empty batch (batch size 0)")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")
        device, dtype = self._reference()
        if device is not None and x.device != device:
            raise ValueError(f"input is on {x.device} but the model is on {device}")
        if dtype is not None and x.dtype != dtype:
            raise ValueError(f"input has dtype {x.dtype} but the model's parameters are {dtype}")
        if not self.validate_args:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or infinite values")
        if self.support is not None:
            low, high = self.support
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if lo < low or hi > high:
                raise ValueError(
                    f"input values must lie in [{low:.4g}, {high:.4g}] (dequantized data scaled "
                    f"to [0, 1]); got values in [{lo:.4g}, {hi:.4g}]"
                )

    def forward_with_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, *event_shape) -> ((B, D) latent, (B,) log|det dz/dx|)``."""
        self._validate(x)
        self._condition(context, x.shape[0])
        return self.bijector(x)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob` (so wrappers such as DistributedDataParallel can call it)."""
        return self.log_prob(x, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(x)`` (``log p(x | context)``) in nats, shape ``(B,)``: prior log-density of
        the latent plus log-det."""
        z, log_det = self.forward_with_log_det(x, context)
        return self.base_log_prob(z) + log_det

    def base_log_prob(self, z: Tensor) -> Tensor:
        """The latent's log-density ``(B, D) -> (B,)`` in nats: ``N(0, I)``'s, or the ``base``'s
        (a conditional base reads the context of the call in progress)."""
        return standard_normal_log_prob(z) if self.base is None else self.base.log_prob(z)

    def _check_reparametrised(self) -> None:
        if self.base is not None and not getattr(self.base, "reparametrised", True):
            raise NotImplementedError(
                f"the {type(self.base).__name__} base density has no reparametrised samples (a mixture's "
                "component choice is discrete): use sample()")

    def encode(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Data ``(B, *event_shape)`` to latent ``(B, D)``; the exact inverse of :meth:`decode`
        in eval mode."""
        return self.forward_with_log_det(x, context)[0]

    def scale_slices(self) -> list[slice]:
        """The coordinates of the flat ``(B, D)`` latent that belong to each scale of a
        multi-scale flow (one whose bijector ends in a :class:`~realnvp.bijectors.MultiScale`,
        after elementwise preprocessing such as the logit): finest scale first, coarsest last;
        see :meth:`MultiScale.scale_slices`. A ``ValueError`` for a flow without scales."""
        body = self.bijector
        if isinstance(body, Sequential) and len(body):
            body = body[-1]
        slices = getattr(body, "scale_slices", None)  # a multi-scale bijector's (no layer named here)
        if slices is None:
            raise ValueError(f"{type(self).__name__} is not a multi-scale flow: its latent has no scales")
        return slices()

    def _check_latent(self, z: Tensor) -> None:
        if not isinstance(z, Tensor):
            raise ValueError(f"expected a torch.Tensor latent, got {type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.num_dims:
            raise ValueError(f"expected a latent of shape (B, {self.num_dims}), got {tuple(z.shape)}")
        if self.validate_args and not bool(torch.isfinite(z).all()):
            raise ValueError("latent contains NaN or infinite values")

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Latent ``(B, D)`` to data ``(B, *event_shape)``."""
        self._check_latent(z)
        self._condition(context, z.shape[0], expand=True)
        return self.bijector.invert(z)

    def _prior_draw(self, n: int, temperature: float, generator) -> Tensor:
        """``(n, D)`` latents from ``N(0, temperature² I)`` (or the ``base`` at that temperature)
        in the model's device and dtype."""
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        if not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if self.base is not None:
            return self.base.sample(n, generator, temperature)
        device, dtype = self._reference()
        z = torch.randn(n, self.num_dims, device=device, dtype=dtype, generator=generator)
        return z if temperature == 1.0 else z * temperature

    def rsample(self, n: int, temperature: float = 1.0, generator=None,
                context: Tensor | None = None) -> Tensor:
        """``n`` reparametrised samples ``(n, *event_shape)``; ``z ~ N(0, temperature² I)``.

        Uses the module's current mode; see :meth:`sample` for the usual entry point.
        """
        self._check_reparametrised()
        return self._draw(n, temperature, generator, context)

    def _draw(self, n: int, temperature: float, generator, context: Tensor | None) -> Tensor:
        self._condition(context, n, expand=True)  # a conditional base reads it
        return self.decode(self._prior_draw(n, temperature, generator), context)

    def rsample_and_log_prob(self, n: int, temperature: float = 1.0, generator=None,
                             context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` reparametrised samples ``(n, *event_shape)`` and the model's ``(n,)``
        log-density at them, in nats, from one pass through the sampling direction:
        ``z ~ N(0, temperature² I)``, ``x, ld = bijector.inverse(z)``,
        ``log p(x) = log N(z; 0, I) − ld`` (``ld = log|det ∂x/∂z|``).

        The log-density is the model's, the number :meth:`log_prob` gives for ``x`` (to
        round-off), at every temperature: the temperature moves the samples, not the density
        they are scored by. The density of the tempered samples themselves is
        ``log p(x) + ½‖z‖²(1 − 1/T²) − D log T``. For an inverse autoregressive flow this is the
        one-pass density of its own samples (its :meth:`log_prob` takes D passes). Uses the
        module's current mode, like :meth:`rsample`; differentiable.
        """
        self._check_reparametrised()
        self._condition(context, n, expand=True)
        z = self._prior_draw(n, temperature, generator)
        x, log_det = self.bijector.inverse(z)
        return x, self.base_log_prob(z) - log_det

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator=None,
               context: Tensor | None = None) -> Tensor:
        """``n`` samples ``(n, *event_shape)`` at the given temperature (which multiplies the
        prior's standard deviation; a mixture base's: its components'). Always runs in eval mode
        (running batch-norm averages), so samples never depend on the last training batch; the
        previous mode is restored."""
        # One pass over the modules, and none to restore when the model is already in eval mode.
        # The flag is set as nn.Module.__init__ sets it, past nn.Module.__setattr__, which costs
        # about a microsecond a module: a tenth of the time a small vector flow takes to sample.
        training = [m for m in self.modules() if m.training]
        for m in training:
            object.__setattr__(m, "training", False)
        try:
            return self._draw(n, temperature, generator, context)
        finally:
            for m in training:
                object.__setattr__(m, "training", True)

    @property
    def memory_saving(self) -> bool:
        """Whether training uses memory-saving backpropagation (see :meth:`memory_saving_`)."""
        return any(m.memory_saving for m in self.modules() if isinstance(m, Sequential))

    def memory_saving_(self, enabled: bool = True) -> Flow:
        """Switch memory-saving backpropagation on or off; returns the model.

        When on, the chains of couplings (each scale of the image model, the whole vector model)
        store no activations in the forward pass: the backward pass recomputes every layer's
        input from its output through the exact inverse and back-propagates one layer at a time
        (:mod:`realnvp.bijectors.invertible_backprop`). Gradients, log-likelihoods and batch-norm
        running statistics are those of plain autograd (to round-off); peak training memory
        drops to roughly one coupling's activations, for about one extra forward pass of the s/t
        networks. Evaluation, sampling and ``torch.no_grad()`` code are unaffected.
        """
        found = 0

        def mark(module: nn.Module) -> None:
            nonlocal found
            if isinstance(module, Sequential) and module.recomputable:
                module.memory_saving = bool(enabled)
                found += 1
                return
            for child in module.children():
                mark(child)

        mark(self.bijector)
        if enabled and not found:
            raise ValueError("this model has no chain of layers that memory-saving backprop supports")
        return self

    def regularized_parameters(self) -> list[nn.Parameter]:
        """The parameters the paper's L2 penalty covers: weight-norm magnitudes (``weight_g``, in
        :meth:`named_parameters` order) and then what each layer lists in its
        :meth:`~realnvp.bijectors.Bijector.penalized_parameters` (the coupling scale factors
        ``rescale`` that are penalised: in :class:`~realnvp.RealNVP` the checkerboard couplings'
        only, as in the authors' code), and nothing else. Layers without a magnitude
        (``scale=False``) contribute none."""
        params = weight_norm_magnitudes(self)
        params += [p for m in self.modules() if isinstance(m, Bijector) for p in m.penalized_parameters()]
        return params
