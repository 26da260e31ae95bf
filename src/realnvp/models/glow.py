"""Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions")."""

from __future__ import annotations

import torch
from torch import Tensor

from ..bijectors import (
    ActNorm,
    Bijector,
    Invertible1x1Conv,
    Logit,
    MultiScale,
    Sequential,
    Squeeze,
)
from ..bijectors.glow import GlowAdditiveCoupling, GlowAffineCoupling, LearnedPrior, Shift, SplitPrior
from ..nets.context import ContextSlot, placeholder
from .flow import Flow
from .image import _logit_domain

GLOW_COUPLINGS = {"affine": GlowAffineCoupling, "additive": GlowAdditiveCoupling}
#: what the data in [0, 1] goes through before the first level (see :class:`Glow`)
PREPROCESSINGS = ("shift", "logit", "none")


class Glow(Flow):
    """Multi-scale Glow for images ``(B, C, H, W)`` with values in ``[0, 1]`` (§3, Figure 2).

    ``num_levels`` levels; each one: a squeeze (``(C, H, W) -> (4C, H/2, W/2)``), then
    ``steps_per_level`` steps of flow, each ``ActNorm → Invertible1x1Conv → coupling``
    (:class:`~realnvp.bijectors.ActNorm`, :class:`~realnvp.bijectors.Invertible1x1Conv` with
    ``lu``, :class:`~realnvp.bijectors.glow.GlowAffineCoupling` or
    :class:`~realnvp.bijectors.glow.GlowAdditiveCoupling` with ``hidden_channels`` in its network
    at every level), then, at every level but the last, a split with Glow's learned prior
    (:class:`~realnvp.bijectors.glow.SplitPrior`): half of the channels leave the flow with the
    prior ``N(μ(z1), σ(z1)²)``, conditioned on the other half, which goes on to the next level.
    With ``learn_top`` (or a context) the last level ends in the learned top prior
    (:class:`~realnvp.bijectors.glow.LearnedPrior`). Both priors are written as bijectors onto a
    standard normal, so :class:`~realnvp.Flow`'s standard-normal prior on the flat latent is
    exactly Glow's; the latent is ``[ε_1, …, ε_L]`` flattened, ordered as
    :class:`~realnvp.bijectors.MultiScale` orders it (ε_k the standardised factored half of
    level k, ε_L the standardised output of the last level).

    ``preprocessing``: ``"shift"`` (Glow's): ``x − 0.5``, volume preserving, no logit; the input
    is then unconstrained (``support`` is ``None``: samples may fall outside [0, 1]), and
    :func:`~realnvp.bijectors.bits_per_dim` of :meth:`log_prob` on dequantized data ``(x + u)/K``
    is the code's bits/dim (its objective's ``−D·log n_bins`` is the ``+ D ln K`` there).
    ``"logit"``: RealNVP's logit transform with ``logit_alpha`` (support as :class:`RealNVP`'s).
    ``"none"``: the data as it is.

    ``edge_bias``: the coupling networks and priors' 3×3 convolutions see the padding indicator
    as an extra channel, as in the authors' code.

    The configurations of the paper and the authors' code: CIFAR-10
    ``Glow((3, 32, 32), num_levels=3, steps_per_level=32, hidden_channels=512)``; ImageNet 32×32
    ``num_levels=3, steps_per_level=48``; ImageNet 64×64 ``(3, 64, 64), num_levels=4,
    steps_per_level=48``; all affine with a learned top prior.

    Data-dependent initialisation: every actnorm (in the steps and in the coupling networks)
    initialises itself on the first forward pass in training mode; :meth:`initialize_` does it on
    a batch of your choice (the code uses a separate batch of 256 at 32×32). The flags travel in
    the state dict, so a loaded model does not initialise again.

    ``memory_saving=True`` trains with memory-saving backpropagation through the exact inverse
    (see :meth:`~realnvp.Flow.memory_saving_`): every level is a chain it supports.

    ``context_features=k > 0``: the conditional flow ``p(x | c)`` (class-conditional with a
    one-hot label): the top prior's mean and log-scale get ``W c`` added, a zero-initialised
    linear map of the context (the authors' ``--ycond``, their only conditioning of the flow),
    and, beyond the code, the context also reaches every coupling network and every split prior
    as ``k`` constant input channels.

    ``dropout``: the probability of :class:`~realnvp.bijectors.glow.GlowNet`'s dropout before
    each coupling network's last convolution (0, Glow's, by default).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_levels: int = 3,
        steps_per_level: int = 32,
        hidden_channels: int = 512,
        lu: bool = True,
        coupling: str = "affine",
        learn_top: bool = True,
        preprocessing: str = "shift",
        logit_alpha: float = 0.05,
        edge_bias: bool = True,
        validate_args: bool = True,
        memory_saving: bool = False,
        context_features: int = 0,
        dropout: float = 0.0,
    ):
        c, h, w = in_shape
        if coupling not in GLOW_COUPLINGS:
            raise ValueError(f"coupling must be one of {sorted(GLOW_COUPLINGS)}, got {coupling!r}")
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if steps_per_level < 1:
            raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        f = 2 ** num_levels
        if h % f or w % f:
            raise ValueError(
                f"input {h}x{w} cannot be squeezed {num_levels} times (H and W must be divisible by {f})"
            )
        slot = ContextSlot(context_features) if context_features else None
        stages = _levels(tuple(in_shape), num_levels, steps_per_level, hidden_channels, lu, coupling,
                         learn_top, edge_bias, slot, dropout)
        with placeholder(slot):  # MultiScale probes each stage's output shape with one example
            body = MultiScale(stages, tuple(in_shape))
        support = None
        if preprocessing == "shift":
            bijector: Bijector = Sequential(Shift(-0.5), body)
        elif preprocessing == "logit":
            bijector = Sequential(Logit(logit_alpha), body)
            support = _logit_domain(logit_alpha)
        else:
            bijector = body
        super().__init__(bijector, event_shape=in_shape, support=support, validate_args=validate_args,
                         context=slot)
        self.config = dict(
            in_shape=tuple(in_shape), num_levels=num_levels, steps_per_level=steps_per_level,
            hidden_channels=hidden_channels, lu=lu, coupling=coupling, learn_top=learn_top,
            preprocessing=preprocessing, logit_alpha=logit_alpha, edge_bias=edge_bias,
            context_features=context_features, dropout=dropout,
        )
        if memory_saving:
            self.memory_saving_(True)

    @torch.no_grad()
    def initialize_(self, x: Tensor, context: Tensor | None = None) -> Glow:
        """Data-dependent initialisation of every actnorm from the batch ``x`` (data as
        :meth:`log_prob` takes it), even those already initialised: one forward pass in training
        mode, each actnorm set from what reaches it through the layers before it (already
        initialised by then). The model's modes are restored; returns the model.

        Under ``torchrun`` every process would initialise from its own batch: initialise before
        the model is wrapped for distributed training, from the same batch on every process (or
        broadcast the parameters afterwards, as the authors' code does)."""
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]
        for m in norms:
            m.initialized.fill_(False)
        modes = {m: m.training for m in self.modules()}
        self.train()
        try:
            self.log_prob(x, context)
        finally:
            for m, mode in modes.items():
                m.train(mode)
        return self


def _levels(in_shape: tuple[int, int, int], num_levels: int, steps: int, hidden: int, lu: bool,
            coupling: str, learn_top: bool, edge_bias: bool,
            context: ContextSlot | None = None, dropout: float = 0.0) -> list[Bijector]:
    """One :class:`Sequential` per level (see :class:`Glow`), built layer by layer in order (the
    order in which the initial weights are drawn). Level k acts on ``(C_k, H_k, W_k)`` with
    ``(C_0, H_0, W_0) = in_shape``; its squeeze makes it ``(4C, H/2, W/2)``; its split halves C."""
    make_coupling = GLOW_COUPLINGS[coupling]
    levels: list[Bijector] = []
    c, h, w = in_shape
    for k in range(num_levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[Bijector] = [Squeeze()]
        for _ in range(steps):
            layers += [ActNorm(c), Invertible1x1Conv(c, lu=lu),
                       make_coupling(c, hidden, edge_bias, context, dropout)]
        if k < num_levels - 1:
            layers.append(SplitPrior(c, edge_bias, context))
            c //= 2
        elif learn_top or context is not None:
            layers.append(LearnedPrior(c, h, w, edge_bias, context, learn_top))
        levels.append(Sequential(*layers))
    return levels
