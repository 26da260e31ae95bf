"""FFJORD (Grathwohl et al., 2019): continuous normalizing flows for vectors and images."""

from __future__ import annotations

from torch import Tensor

from ..bijectors import Logit, MultiScale, Sequential, Squeeze
from ..bijectors.cnf import CNF, regularization_loss, total_nfe
from ..nets.context import ContextSlot, placeholder
from ..nets.odefunc import ConcatSquashConvNet, ConcatSquashMLP
from .flow import Flow
from .image import _logit_domain


class _CNFModel:
    """What the training loop asks of a model made of CNFs."""

    @property
    def nfe(self) -> int:
        """Function evaluations of the last solve of every CNF, summed (the last forward pass, or
        the last sample)."""
        return total_nfe(self)

    def regularization_loss(self) -> Tensor | float:
        """The weighted RNODE regularisers of the last training forward pass (0.0 when off)."""
        return regularization_loss(self)


def _cnf_kwargs(t1, train_t1, solver, rtol, atol, adjoint, trace, noise, kinetic_energy, jacobian_norm,
                max_nfe, test_rtol, test_atol, test_solver, step_size) -> dict:
    return dict(t1=t1, train_t1=train_t1, solver=solver, rtol=rtol, atol=atol, adjoint=adjoint,
                trace=trace, noise=noise, kinetic_energy=kinetic_energy, jacobian_norm=jacobian_norm,
                max_nfe=max_nfe, test_rtol=test_rtol, test_atol=test_atol, test_solver=test_solver,
                step_size=step_size)


class FFJORD(_CNFModel, Flow):
    """Vector FFJORD: ``num_blocks`` CNFs in a row, each with a concat-squash MLP
    (:class:`~realnvp.nets.odefunc.ConcatSquashMLP`) as its dynamics. ``(B, D) -> (B, D)``.

    The defaults are the reference code's 2-D toy setting (``train_toy.py``: three hidden layers
    of 64, tanh, one block, ``T = 0.5`` learnt, dopri5 at ``atol = rtol = 1e-5``, exact trace);
    its tabular setting is ``activation="softplus", t1=1.0, atol=1e-8, rtol=1e-6``. See
    :class:`~realnvp.bijectors.CNF` for the solver, trace and regularisation options.
    ``context_features = k > 0``: the conditional density ``p(x | c)`` for a ``(B, k)`` context,
    which joins the time as the input of every concat-squash layer's gate and bias
    (``dynamics(t, z, c)``).
    """

    def __init__(self, dim: int, hidden: int = 64, num_hidden_layers: int = 3, num_blocks: int = 1,
                 activation: str = "tanh", t1: float = 0.5, train_t1: bool = True, solver: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, adjoint: bool = False, trace: str = "auto",
                 noise: str = "rademacher", kinetic_energy: float = 0.0, jacobian_norm: float = 0.0,
                 max_nfe: int = 10_000, validate_args: bool = True, context_features: int = 0,
                 test_rtol: float | None = None, test_atol: float | None = None,
                 test_solver: str | None = None, step_size: float = 0.05):
        if dim < 1 or hidden < 1 or num_hidden_layers < 0 or num_blocks < 1:
            raise ValueError("dim, hidden and num_blocks must be >= 1 and num_hidden_layers >= 0")
        kw = _cnf_kwargs(t1, train_t1, solver, rtol, atol, adjoint, trace, noise, kinetic_energy,
                         jacobian_norm, max_nfe, test_rtol, test_atol, test_solver, step_size)
        slot = ContextSlot(context_features) if context_features else None
        blocks = [CNF(ConcatSquashMLP(dim, hidden, num_hidden_layers, activation, context_features),
                      context=slot, **kw) for _ in range(num_blocks)]
        super().__init__(Sequential(*blocks), event_shape=(dim,), validate_args=validate_args,
                         context=slot)
        self.config = dict(dim=dim, hidden=hidden, num_hidden_layers=num_hidden_layers,
                           num_blocks=num_blocks, activation=activation,
                           context_features=context_features, **kw)


class FFJORDImage(_CNFModel, Flow):
    """Multi-scale FFJORD for images ``(B, C, H, W)`` in ``[0, 1]``: the reference code's
    ``odenvp`` layout (``lib/odenvp.py``).

    A logit transform (``logit_alpha``) first; then ``num_scales`` scales (default: as many as
    halve ``H`` and ``W`` while both are >= 4, as the reference computes it). Every scale but the
    last is ``num_blocks`` CNFs, a squeeze, ``num_blocks`` CNFs, then half of the channels leave
    the flow (:class:`~realnvp.bijectors.MultiScale`; the reference factors out the second half,
    this the first); the last is ``num_blocks`` CNFs. Each CNF's dynamics is a 3×3 concat-squash
    convolutional net (:class:`~realnvp.nets.odefunc.ConcatSquashConvNet`,
    ``hidden_channels`` × ``num_hidden_layers``). Hutchinson's trace with Rademacher noise, as the
    reference's image runs (``--rademacher True``).

    The reference's MNIST/CIFAR-10 setting: ``hidden_channels=64, num_hidden_layers=3,
    num_blocks=2``, softplus, ``t1 = 1`` learnt, dopri5 at 1e-5 (a GPU job: about 1 bit/dim on
    MNIST after days). For a CPU smoke run use e.g. ``hidden_channels=4, num_hidden_layers=1,
    num_blocks=1, num_scales=1, rtol=atol=1e-3``. ``context_features = k > 0``: class-conditional
    (or any ``(B, k)`` context), the context joining the time in every layer's gate and bias.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_scales: int | None = None, num_blocks: int = 2,
                 hidden_channels: int = 64, num_hidden_layers: int = 3, activation: str = "softplus",
                 logit_alpha: float = 0.05, t1: float = 1.0, train_t1: bool = True, solver: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, adjoint: bool = False, trace: str = "hutchinson",
                 noise: str = "rademacher", kinetic_energy: float = 0.0, jacobian_norm: float = 0.0,
                 max_nfe: int = 10_000, validate_args: bool = True, context_features: int = 0,
                 test_rtol: float | None = None, test_atol: float | None = None,
                 test_solver: str | None = None, step_size: float = 0.05):
        c, h, w = in_shape
        possible = 0
        hh, ww = h, w
        while hh >= 4 and ww >= 4:
            possible, hh, ww = possible + 1, hh // 2, ww // 2
        num_scales = possible if num_scales is None else num_scales
        if not 1 <= num_scales <= max(possible, 1):
            raise ValueError(f"num_scales must be in [1, {max(possible, 1)}] for {h}x{w} images, got "
                             f"{num_scales}")
        if num_scales > 1 and (h % 2 ** (num_scales - 1) or w % 2 ** (num_scales - 1)):
            raise ValueError(f"{h}x{w} images cannot be squeezed {num_scales - 1} times")
        kw = _cnf_kwargs(t1, train_t1, solver, rtol, atol, adjoint, trace, noise, kinetic_energy,
                         jacobian_norm, max_nfe, test_rtol, test_atol, test_solver, step_size)

        slot = ContextSlot(context_features) if context_features else None

        def blocks(channels: int) -> list[CNF]:
            return [CNF(ConcatSquashConvNet(channels, hidden_channels, num_hidden_layers, activation,
                                            context_features), context=slot, **kw)
                    for _ in range(num_blocks)]

        stages = []
        for k in range(num_scales):
            if k < num_scales - 1:
                stages.append(Sequential(*blocks(c), Squeeze(), *blocks(4 * c)))
                c = 2 * c
            else:
                stages.append(Sequential(*blocks(c)))
        with placeholder(slot):  # MultiScale probes each stage's output shape with one example
            bijector = Sequential(Logit(logit_alpha), MultiScale(stages, tuple(in_shape)))
        super().__init__(bijector, event_shape=tuple(in_shape), support=_logit_domain(logit_alpha),
                         validate_args=validate_args, context=slot)
        self.config = dict(in_shape=tuple(in_shape), num_scales=num_scales, num_blocks=num_blocks,
                           hidden_channels=hidden_channels, num_hidden_layers=num_hidden_layers,
                           activation=activation, logit_alpha=logit_alpha,
                           context_features=context_features, **kw)
