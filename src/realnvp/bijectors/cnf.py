"""Continuous normalizing flows (FFJORD: Grathwohl et al., 2019), solved with torchdiffeq.

``dz/dt = f(t, z)`` from ``t = 0`` (data) to ``t = t1`` (latent), and the instantaneous change of
variables ``d log|det ∂z(t)/∂z(0)| / dt = Tr(∂f/∂z)``: the log-det of the flow map is the integral
of the trace, solved as one more component of the state. The trace is exact (``D`` vector-Jacobian
products per evaluation of ``f``) or Hutchinson's estimate ``εᵀ(∂f/∂z)ε`` (one product), with the
noise ``ε`` (Rademacher or Gaussian) drawn once per solve, as in FFJORD's reference code.

RNODE's regularisers (Finlay et al., 2020), ``∫‖f‖² dt`` and ``∫‖εᵀ∂f/∂z‖² dt``, can be
integrated alongside in training; :attr:`CNF.regularization` holds their weighted sum after each
training forward pass and a model's ``regularization_loss()`` adds it to the loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nets.context import ContextSlot
from .base import Bijector

TRACES = ("exact", "hutchinson", "auto")
NOISES = ("rademacher", "gaussian")
ERROR_NORMS = ("max", "rms")
#: torchdiffeq's fixed-grid solvers (they take ``step_size`` from ``solver_options``)
FIXED_GRID_SOLVERS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


class ODESolverError(RuntimeError):
    """The ODE solve of a :class:`CNF` did not finish: more function evaluations than the
    ``max_nfe`` guard allows, or the adaptive step size underflowed (stiff or diverging dynamics)."""


def _max_norm(state: tuple[Tensor, ...]) -> Tensor:
    """The adaptive solvers' error norm over the state and the log-det (not the regularisers):
    the largest error relative to its tolerance, of any example and feature."""
    return torch.max(state[0].abs().max(), state[1].abs().max())


def _noise(like: Tensor, kind: str) -> Tensor:
    if kind == "gaussian":
        return torch.randn_like(like)
    return torch.randint(0, 2, like.shape, device=like.device).to(like).mul_(2).sub_(1)


def exact_divergence(f: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """``Tr(∂f/∂z)`` per example, ``(B,)``, from ``D`` vector-Jacobian products (the rows of a
    batch must not interact, as in any CNF dynamics)."""
    flat = f.reshape(f.shape[0], -1)
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    if not flat.requires_grad:
        return div
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True,
                                   allow_unused=True)
        if g is not None:
            div = div + g.reshape(g.shape[0], -1)[:, i]
    return div


def hutchinson_divergence(f: Tensor, z: Tensor, eps: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate ``εᵀ(∂f/∂z)ε`` per example, ``(B,)``, and ``εᵀ∂f/∂z`` (shaped like
    ``z``), from one vector-Jacobian product. Unbiased for ``E[εεᵀ] = I``."""
    if not f.requires_grad:
        return f.new_zeros(f.shape[0]), torch.zeros_like(z)
    (e_j,) = torch.autograd.grad(f, z, eps, create_graph=create_graph, retain_graph=True, allow_unused=True)
    if e_j is None:
        return f.new_zeros(f.shape[0]), torch.zeros_like(z)
    return (e_j * eps).reshape(f.shape[0], -1).sum(dim=1), e_j


class _Augmented(nn.Module):
    """The right-hand side torchdiffeq solves, in rescaled time ``s = t / t1 ∈ [0, 1]``:
    ``(z, log-det[, ∫‖f‖²][, ∫‖εᵀJ‖²])``. Counts its evaluations and enforces the guard."""

    def __init__(self, cnf: CNF, trace: str | None, eps: Tensor | None, context: Tensor | None,
                 kinetic: bool, jacobian: bool):
        super().__init__()
        self.cnf = cnf  # a submodule: its parameters are the adjoint's
        self.trace, self.eps, self.context = trace, eps, context
        self.kinetic, self.jacobian = kinetic, jacobian
        self.nfe = 0

    def forward(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        cnf = self.cnf
        if self.nfe > cnf.max_nfe:
            rtol, atol = cnf.tolerances()
            raise ODESolverError(
                f"CNF max_nfe guard: the ODE solve needed more than max_nfe={cnf.max_nfe} function "
                f"evaluations ({cnf.solver_now()}, rtol={rtol:g}, atol={atol:g}) - the dynamics are "
                "stiff or diverging; lower the learning rate, regularise the dynamics (kinetic_energy, "
                "jacobian_norm), loosen the tolerances or raise max_nfe")
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[0]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            t1 = cnf.end_time
            args = (s * t1, z) if self.context is None else (s * t1, z, self.context)
            f = cnf.dynamics(*args) * t1
            out = [f]
            e_j = div = None
            if self.trace == "hutchinson" or self.jacobian:
                div, e_j = hutchinson_divergence(f, z, self.eps, create_graph)
            if self.trace == "exact":
                div = exact_divergence(f, z, create_graph)
            out.append(div if self.trace is not None else torch.zeros_like(state[1]))
            if self.kinetic:  # ∫‖f_t‖² dt = ∫‖f_s‖² / t1 ds
                out.append(f.pow(2).reshape(f.shape[0], -1).sum(dim=1) / t1)
            if self.jacobian:
                out.append(e_j.pow(2).reshape(f.shape[0], -1).sum(dim=1) / t1)
        if not create_graph:
            out = [o.detach() for o in out]
        return tuple(out)


class CNF(Bijector):
    """A continuous normalizing flow ``dz/dt = f(t, z[, context])`` on ``t ∈ [0, t1]``.

    ``forward`` (data → latent) integrates from 0 to ``t1`` with the log-det ``∫ Tr(∂f/∂z) dt``;
    the inverse integrates back from ``t1`` to 0 (without the trace when only the map is asked
    for: :meth:`invert`, sampling).

    Args:
        dynamics: an ``nn.Module`` called as ``dynamics(t, z)`` (or ``(t, z, context)``) returning
            ``dz/dt`` shaped like ``z``; rows of a batch must not interact.
        t1: the end time (FFJORD's ``T``); ``train_t1=True`` learns it (FFJORD's ``train_T``,
            parametrised as ``sqrt(t1)²``).
        solver, rtol, atol: torchdiffeq's ``method`` and tolerances; the defaults are FFJORD's
            (``dopri5``, 1e-5 and 1e-5; its tabular runs use ``atol=1e-8, rtol=1e-6``).
            ``solver_options`` go to torchdiffeq.
        step_size: the fixed-grid solvers' step in the rescaled time ``s = t / t1 ∈ [0, 1]``
            (the reference code's ``--step_size``; 0.25: four steps per solve).
        test_solver, test_rtol, test_atol: the solver and tolerances in eval mode (validation,
            test, sampling), the reference code's ``--test_solver``/``--test_rtol``/
            ``--test_atol``; ``None``: ``solver``/``rtol``/``atol``. A flow trained at loose
            tolerances, or on a fixed grid (RNODE's recipe), is then scored by an adaptive solve
            at tight ones.
        adjoint: back-propagate with the adjoint method (``odeint_adjoint``: memory constant in
            the number of steps, usually slower) instead of through the solver's operations.
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"``: exact when ``D ≤ exact_max_dim``,
            and in evaluation (eval mode or no gradient) when ``D ≤ eval_exact_max_dim``;
            Hutchinson otherwise.
        noise: Hutchinson's ``"rademacher"`` or ``"gaussian"`` noise, fixed within one solve.
        kinetic_energy, jacobian_norm: weights of RNODE's ``∫‖f‖² dt`` and ``∫‖εᵀ∂f/∂z‖² dt``
            (means over the batch), integrated in training forward passes only.
        max_nfe: the guard: a solve that needs more function evaluations raises
            :class:`ODESolverError` naming it (as does torchdiffeq's "underflow in dt").
        context: the :class:`~realnvp.nets.context.ContextSlot` of a conditional flow: the
            dynamics are called as ``dynamics(t, z, context)`` with the slot's context (a context
            passed to :meth:`forward` explicitly takes precedence).
        error_norm: how the adaptive solvers combine the local errors (each relative to
            ``atol + rtol·|y|``): ``"max"``, the largest of any example and feature (every
            example's state and log-det within the tolerances), or ``"rms"``, torchdiffeq's
            default (the root mean square over the whole batch: the reference code's, which lets
            single examples be off by ~10× the tolerance at no fewer steps here).

    After each solve :attr:`nfe` is its number of function evaluations; after a training forward
    pass with a regulariser :attr:`regularization` is the weighted sum (else ``None``) and
    :attr:`regularization_terms` the unweighted means.
    """

    def __init__(self, dynamics: nn.Module, t1: float = 1.0, train_t1: bool = False, solver: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, adjoint: bool = False, trace: str = "auto",
                 noise: str = "rademacher", exact_max_dim: int = 8, eval_exact_max_dim: int = 32,
                 kinetic_energy: float = 0.0, jacobian_norm: float = 0.0, max_nfe: int = 10_000,
                 error_norm: str = "max", solver_options: dict | None = None,
                 context: ContextSlot | None = None, test_rtol: float | None = None,
                 test_atol: float | None = None, test_solver: str | None = None, step_size: float = 0.05):
        super().__init__()
        if not 0 < t1 < math.inf:
            raise ValueError(f"t1 must be a finite number > 0, got {t1}")
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {', '.join(TRACES)}, got {trace!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
        if not all(t is None or t > 0 for t in (test_rtol, test_atol)):
            raise ValueError(f"test_rtol and test_atol must be > 0 (or None), got {test_rtol}, {test_atol}")
        if error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {', '.join(ERROR_NORMS)}, got {error_norm!r}")
        if max_nfe < 1:
            raise ValueError(f"max_nfe must be >= 1, got {max_nfe}")
        if kinetic_energy < 0 or jacobian_norm < 0:
            raise ValueError("the regularisation weights must be >= 0")
        from torchdiffeq._impl.odeint import SOLVERS

        for name, value in (("solver", solver), ("test_solver", test_solver)):
            if value is not None and value not in SOLVERS:
                raise ValueError(f"{name} must be one of {', '.join(sorted(SOLVERS))}, got {value!r}")
        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1] (a fraction of the integration time), "
                             f"got {step_size}")
        self.dynamics = dynamics
        self.context_slot = context
        root = torch.tensor(float(t1)).sqrt()
        if train_t1:
            self.sqrt_end_time = nn.Parameter(root)
        else:
            self.register_buffer("sqrt_end_time", root)
        self.solver, self.rtol, self.atol, self.adjoint = solver, float(rtol), float(atol), adjoint
        self.test_solver, self.step_size = test_solver, float(step_size)
        self.test_rtol = float(test_rtol) if test_rtol is not None else None
        self.test_atol = float(test_atol) if test_atol is not None else None
        self.trace, self.noise = trace, noise
        self.exact_max_dim, self.eval_exact_max_dim = exact_max_dim, eval_exact_max_dim
        self.kinetic_energy, self.jacobian_norm = float(kinetic_energy), float(jacobian_norm)
        self.max_nfe = int(max_nfe)
        self.error_norm = error_norm
        self.solver_options = dict(solver_options or {})
        #: function evaluations of the last solve (either direction)
        self.nfe = 0
        self.regularization: Tensor | None = None
        self.regularization_terms: dict[str, Tensor] = {}

    @property
    def end_time(self) -> Tensor:
        """``t1`` as a tensor (differentiable when learnt)."""
        return self.sqrt_end_time * self.sqrt_end_time

    def tolerances(self) -> tuple[float, float]:
        """``(rtol, atol)`` of a solve now: the test ones in eval mode (when given)."""
        if self.training:
            return self.rtol, self.atol
        return (self.rtol if self.test_rtol is None else self.test_rtol,
                self.atol if self.test_atol is None else self.test_atol)

    def solver_now(self) -> str:
        """The solver of a solve now: the test one in eval mode (when given)."""
        return self.solver if self.training or self.test_solver is None else self.test_solver

    def trace_mode(self, dim: int) -> str:
        """``"exact"`` or ``"hutchinson"``: what a solve on ``dim`` features would use now."""
        if self.trace != "auto":
            return self.trace
        evaluating = not (self.training and torch.is_grad_enabled())
        if dim <= self.exact_max_dim or (evaluating and dim <= self.eval_exact_max_dim):
            return "exact"
        return "hutchinson"

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, False, True, context)

    def _inverse(self, y: Tensor, with_log_det: bool, context: Tensor | None = None):
        return self._solve(y, True, with_log_det, context)

    def _solve(self, x: Tensor, reverse: bool, with_log_det: bool, context: Tensor | None):
        from torchdiffeq import odeint, odeint_adjoint

        if context is None and self.context_slot is not None:
            context = self.context_slot.read()  # the context of the conditional flow's call
        dim = x[0].numel()
        trace = self.trace_mode(dim) if with_log_det else None
        regularize = self.training and torch.is_grad_enabled() and not reverse
        kinetic = regularize and self.kinetic_energy > 0
        jacobian = regularize and self.jacobian_norm > 0
        eps = _noise(x, self.noise) if trace == "hutchinson" or jacobian else None
        func = _Augmented(self, trace, eps, context, kinetic, jacobian)
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros) + (zeros,) * (int(kinetic) + int(jacobian))
        # the regularisers are not under error control (as in FFJORD's reference code)
        options = dict(self.solver_options)
        rtol, atol = tolerances = self.tolerances()
        method = self.solver_now()
        if method in FIXED_GRID_SOLVERS:
            options.setdefault("step_size", self.step_size)
        else:
            options.pop("step_size", None)
        if self.error_norm == "max" and method not in FIXED_GRID_SOLVERS:
            options.setdefault("norm", _max_norm)
        elif len(state) > 2:
            rtol = (rtol, rtol) + (1e20,) * (len(state) - 2)
            atol = (atol, atol) + (1e20,) * (len(state) - 2)
        s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=x.dtype, device=x.device)
        kwargs = dict(rtol=rtol, atol=atol, method=method, options=options)
        try:
            if self.adjoint and torch.is_grad_enabled():
                out = odeint_adjoint(func, state, s, adjoint_params=tuple(self.parameters()),
                                     adjoint_rtol=tolerances[0], adjoint_atol=tolerances[1], **kwargs)
            else:
                out = odeint(func, state, s, **kwargs)
        except AssertionError as e:
            if "underflow in dt" not in str(e):
                raise
            raise ODESolverError(
                f"CNF ODE solve failed after {func.nfe} function evaluations: torchdiffeq's step size "
                f"underflowed ({e}) - the dynamics are stiff or diverging; lower the learning rate, "
                "regularise the dynamics or loosen rtol/atol") from None
        finally:
            self.nfe = func.nfe
        z = out[0][-1]
        log_det = out[1][-1].to(torch.promote_types(x.dtype, torch.float32))
        if not reverse:
            self._record_regularization(out[2:], kinetic, jacobian)
        return z, (log_det if with_log_det else None)

    def __getstate__(self) -> dict:
        # a copy (``copy.deepcopy``: the trainer's selected model) leaves behind the last pass's
        # regularisers, which hold that pass's autograd graph
        state = super().__getstate__()
        return {**state, "regularization": None, "regularization_terms": {}}

    def _record_regularization(self, states, kinetic: bool, jacobian: bool) -> None:
        terms, total = {}, None
        names = [n for n, on in (("kinetic_energy", kinetic), ("jacobian_norm", jacobian)) if on]
        for name, st in zip(names, states, strict=True):
            terms[name] = st[-1].mean()
            part = getattr(self, name) * terms[name]
            total = part if total is None else total + part
        self.regularization_terms, self.regularization = terms, total

    def extra_repr(self) -> str:
        test = "" if self.test_rtol is None and self.test_atol is None else \
            f", test_rtol={self.test_rtol}, test_atol={self.test_atol}"
        if self.solver in FIXED_GRID_SOLVERS:
            test = f", step_size={self.step_size:g}" + test
        if self.test_solver is not None:
            test += f", test_solver={self.test_solver}"
        return (f"t1={float(self.end_time.detach()):.4g}, solver={self.solver}, rtol={self.rtol:g}, "
                f"atol={self.atol:g}{test}, trace={self.trace}, noise={self.noise}, adjoint={self.adjoint}")


def regularization_loss(module: nn.Module) -> Tensor | float:
    """The sum of :attr:`CNF.regularization` over the CNFs in ``module`` after a forward pass
    (0.0 when none has one)."""
    total: Tensor | float = 0.0
    for m in module.modules():
        if isinstance(m, CNF) and m.regularization is not None:
            total = total + m.regularization
    return total


def total_nfe(module: nn.Module) -> int:
    """Function evaluations of the last solve of every CNF in ``module``, summed."""
    return sum(m.nfe for m in module.modules() if isinstance(m, CNF))
