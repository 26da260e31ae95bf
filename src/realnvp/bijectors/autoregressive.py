"""Masked autoregressive layers: MAF (Papamakarios, Pavlakou & Murray, 2017, §3) and IAF (Kingma
et al., 2016, §4) as one bijector with a ``direction`` switch.

Each feature goes through a one-dimensional transformer ``τ`` whose parameters come from a
:class:`~realnvp.nets.MADE`, so ``θ_i`` depends only on the features before ``i`` in the MADE's
order. In the package's convention (``forward``: data ``x`` → latent ``z``):

- MAF reads the data side: ``z_i = τ(x_i; θ_i(x_{<i}))``. The density (``forward``) is one MADE
  pass; sampling (``inverse``) solves the features one rank after the other, ``MADE.passes``
  (≤ D) passes.
- IAF reads the latent side: ``x_i = τ⁻¹(z_i; θ_i(z_{<i}))``. Sampling and the density of its own
  samples (``inverse``) are one pass; the density of arbitrary data (``forward``) takes
  ``MADE.passes`` passes.

The sequential direction iterates ``v ← τ^{±1}(·; MADE(v))`` from ``v = 0``: after pass ``r`` the
features of rank ≤ r are exact, and the parameters of the last pass are those of the solution, so
its log-det needs no extra pass. The iteration is ordinary autograd code, differentiable (an IAF
can be trained by maximum likelihood on data).

Transformers:

- ``'affine'``: MAF's ``z_i = (x_i − μ_i)·exp(−α_i)``, log-det ``−Σ α_i`` (the IAF form
  ``x_i = z_i·σ_i + μ_i`` with ``σ_i = exp(α_i)``). The log-scale is bounded,
  ``α = rescale·tanh(raw)`` with a learned ``rescale`` per feature (starting at 1), as the
  couplings bound theirs: an unbounded ``exp(α)`` can overflow in the sequential direction, where
  every pass but the last pushes not-yet-solved values through it, and early in training.
- ``'gated'``: IAF's "LSTM-type" update (Kingma et al., 2016, §4, eq. 14 and Algorithm 1): in
  the sampling direction ``x_i = σ_i·z_i + (1 − σ_i)·m_i`` with ``σ_i = sigmoid(s_i)``, log-det
  ``Σ log σ_i``; its density direction ``z_i = (x_i − (1 − σ_i)·m_i)/σ_i``. The bias of every
  ``s`` output starts at ``gate_bias`` (the paper: "sufficiently positive, such as close to +1 or
  +2"), so each layer starts as a small step ``σ ≈ 0.88`` from the identity. The scale ``σ < 1``
  contracts in the sampling direction. The authors' code (openai/iaf) uses the affine form
  instead, ``(z − m)/exp(s)`` with the network's outputs scaled by 0.1.
- ``'spline'``: the rational-quadratic spline of :mod:`.splines` (NSF §3.3, "autoregressive
  neural spline flows"), ``3K − 1`` parameters per feature, identity outside ``[−bound, bound]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets.context import ContextSlot
from ..nets.made import MADE
from .base import Bijector, sum_except_batch
from .splines import rational_quadratic

TRANSFORMERS = ("affine", "gated", "spline")
DIRECTIONS = ("maf", "iaf")


class MaskedAutoregressive(Bijector):
    """One autoregressive layer on ``(B, features)``.

    Direction: ``direction='maf'``: ``forward`` (data → latent, density) is one MADE pass and
    ``inverse`` (latent → data, sampling) is ``passes`` sequential passes; ``direction='iaf'``:
    ``inverse`` (sampling, and the density of those samples) is one pass and ``forward`` (density
    of arbitrary data) is ``passes`` sequential passes, differentiable.

    Args:
        features: D.
        transformer: ``'affine'``, ``'gated'`` or ``'spline'`` (see the module docstring).
        direction: ``'maf'`` (the MADE reads the data) or ``'iaf'`` (it reads the latent).
        hidden, num_layers, residual, order: the MADE's (see :class:`~realnvp.nets.MADE`).
        bins, bound, min_bin, min_derivative: the spline's (see
            :func:`~realnvp.bijectors.splines.rational_quadratic`); ignored otherwise.
        gate_bias: the initial bias of the ``'gated'`` transformer's ``s`` outputs; ignored
            otherwise.

    :attr:`passes`: the number of MADE passes of the sequential direction (at most D).
    """

    def __init__(
        self,
        features: int,
        transformer: str = "affine",
        direction: str = "maf",
        hidden: int = 128,
        num_layers: int = 2,
        residual: bool = False,
        order: Tensor | None = None,
        bins: int = 8,
        bound: float = 5.0,
        min_bin: float = 1e-3,
        min_derivative: float = 1e-3,
        context: ContextSlot | None = None,
        gate_bias: float = 2.0,
    ):
        super().__init__()
        if transformer not in TRANSFORMERS:
            raise ValueError(f"transformer must be one of {TRANSFORMERS}, got {transformer!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if transformer == "spline" and bins < 1:
            raise ValueError(f"a spline needs at least one bin, got bins={bins}")
        self.features, self.transformer, self.direction = features, transformer, direction
        self.bins, self.bound = int(bins), float(bound)
        self.min_bin, self.min_derivative = float(min_bin), float(min_derivative)
        per_feature = 3 * self.bins - 1 if transformer == "spline" else 2
        self.context = context
        self.made = MADE(features, per_feature, hidden=hidden, num_layers=num_layers,
                         residual=residual, order=order,
                         context_features=context.features if context is not None else 0)
        if transformer == "affine":
            self.rescale = nn.Parameter(torch.ones(features))
        if transformer == "gated":
            with torch.no_grad():
                self.made.output.bias.view(features, 2)[:, 1] = gate_bias

    @property
    def passes(self) -> int:
        return self.made.passes

    def _check(self, v: Tensor) -> None:
        if v.dim() != 2 or v.shape[1] != self.features:
            raise ValueError(
                f"MaskedAutoregressive expects (B, {self.features}) input, got shape {tuple(v.shape)}"
            )

    def _params(self, v: Tensor) -> Tensor:
        """``(B, D, P)`` transformer parameters from the MADE, in ``v``'s dtype."""
        h = self.made(v, None if self.context is None else self.context.read())
        return h if h.dtype == v.dtype else h.to(v.dtype)

    def _tau(self, v: Tensor, h: Tensor, inverse: bool,
             with_log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        """The transformer, elementwise: data → latent (``inverse=False``) or latent → data, with
        the elementwise log-derivative of the map applied (the spline's: ``None`` unless
        ``with_log_det``)."""
        if self.transformer == "affine":
            mu, alpha = h[..., 0], self.rescale * torch.tanh(h[..., 1])
            if inverse:
                return torch.addcmul(mu, v, torch.exp(alpha)), alpha
            return (v - mu) / torch.exp(alpha), -alpha
        if self.transformer == "gated":
            m, log_sigma = h[..., 0], nn.functional.logsigmoid(h[..., 1])
            sigma = torch.exp(log_sigma)
            if inverse:
                return torch.lerp(m, v, sigma), log_sigma
            return (v - (1 - sigma) * m) / sigma, -log_sigma
        k = self.bins
        return rational_quadratic(v, h[..., :k], h[..., k:2 * k], h[..., 2 * k:], inverse,
                                  self.bound, self.min_bin, self.min_derivative, with_log_det)

    def _one_pass(self, v: Tensor, inverse: bool, with_log_det: bool = True
                  ) -> tuple[Tensor, Tensor | None]:
        out, ld = self._tau(v, self._params(v), inverse, with_log_det)
        return out, (sum_except_batch(ld) if with_log_det else None)

    def _sequential(self, v: Tensor, inverse: bool, with_log_det: bool = True
                    ) -> tuple[Tensor, Tensor | None]:
        """Solve ``out = τ^{±1}(v; MADE(out))`` rank by rank, ``passes`` passes from zero (the
        log-derivative, if asked for, in the last pass only)."""
        out = torch.zeros_like(v)
        for i in range(self.passes):
            last = i == self.passes - 1
            out, ld = self._tau(v, self._params(out), inverse, with_log_det and last)
        return out, (sum_except_batch(ld) if with_log_det else None)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.direction == "maf":
            return self._one_pass(x, inverse=False)
        return self._sequential(x, inverse=False)

    def _inverse(self, z: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        self._check(z)
        if self.direction == "maf":
            return self._sequential(z, inverse=True, with_log_det=with_log_det)
        # IAF: the MADE reads the latent it maps
        return self._one_pass(z, inverse=True, with_log_det=with_log_det)

    def extra_repr(self) -> str:
        extra = f", bins={self.bins}, bound={self.bound}" if self.transformer == "spline" else ""
        return (f"features={self.features}, transformer={self.transformer!r}, "
                f"direction={self.direction!r}{extra}")
