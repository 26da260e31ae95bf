"""MADE MoG: an autoregressive mixture-of-Gaussians density, the base density of "MAF MoG"
(Papamakarios, Pavlakou & Murray, 2017, Table 1: a MAF of 5 layers on a MADE MoG of C = 10
components).

Each conditional is a mixture of ``C`` Gaussians whose weights, means and log standard deviations
come from a :class:`~realnvp.nets.MADE` (``3C`` outputs per feature, so ``θ_i`` depends only on
the features before ``i`` in the MADE's order):

    p(u) = Π_i Σ_c π_ic N(u_i; μ_ic, σ_ic²),   π_i = softmax(logits_i),   σ_ic = exp(s_ic)

with the log standard deviations clamped to ``[−7, 5]`` (as the log-scales of the package's
bijectors are bounded: a component cannot collapse onto one training point). The density is one
MADE pass; sampling solves the features rank by rank, ``MADE.passes`` (≤ D) passes, from noise
drawn once (a uniform for the component and a normal for the offset of each feature), so every
pass maps the same noise and the features of rank ≤ r are final after pass r. Mixture samples are
not reparametrisable (the component choice is discrete): :meth:`sample` carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets.context import ContextSlot
from ..nets.made import MADE
from ..normal import normal_log_prob

LOG_SCALE_RANGE = (-7.0, 5.0)


class MADEMoG(nn.Module):
    """An autoregressive mixture-of-Gaussians density on ``(B, D)``.

    Args:
        dim: D.
        components: C, Gaussians per conditional (the MAF paper: 10).
        hidden, num_layers, residual: the MADE's width, hidden layers, residual blocks.
        order: the MADE's order (``order[d]``: the rank of feature ``d``); default ``1..D``.
        context: a conditional flow's :class:`~realnvp.nets.context.ContextSlot`: the MADE reads
            its context (degree 0: every conditional depends on it).
    """

    reparametrised = False  # the component choice is discrete: no rsample

    def __init__(self, dim: int, components: int = 10, hidden: int = 128, num_layers: int = 2,
                 residual: bool = False, order: Tensor | None = None, context: ContextSlot | None = None):
        super().__init__()
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"a mixture needs components >= 1, got {components!r}")
        self.dim, self.components = dim, components
        self.context = context
        self.made = MADE(dim, 3 * components, hidden=hidden, num_layers=num_layers, residual=residual,
                         order=order, context_features=context.features if context is not None else 0,
                         out_scale=1.0)

    def parameters_of(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log π, μ, log σ)`` of every conditional at ``u (B, D)``: ``(B, D, C)`` each."""
        h = self.made(u, None if self.context is None else self.context.read())
        h = h if h.dtype == u.dtype else h.to(u.dtype)
        c = self.components
        log_pi = F.log_softmax(h[..., :c], dim=-1)
        return log_pi, h[..., c:2 * c], h[..., 2 * c:].clamp(*LOG_SCALE_RANGE)

    def log_prob(self, u: Tensor) -> Tensor:
        """``log p(u)`` in nats: ``(B, D) -> (B,)``."""
        log_pi, mu, log_sigma = self.parameters_of(u)
        log_normal = normal_log_prob(u.unsqueeze(-1), mu, log_sigma)
        return torch.logsumexp(log_pi + log_normal, dim=-1).sum(dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator=None, temperature: float = 1.0) -> Tensor:
        """``(n, D)`` draws, in ``MADE.passes`` passes from noise drawn once (no gradient).
        ``temperature`` multiplies every component's standard deviation (the weights and means
        are kept): 1 draws from the density, 0 gives the chosen components' means."""
        ref = self.made.output.weight
        uniform = torch.rand(n, self.dim, 1, device=ref.device, dtype=ref.dtype, generator=generator)
        eps = torch.randn(n, self.dim, device=ref.device, dtype=ref.dtype, generator=generator)
        u = torch.zeros(n, self.dim, device=ref.device, dtype=ref.dtype)
        for _ in range(self.made.passes):
            log_pi, mu, log_sigma = self.parameters_of(u)
            cdf = torch.cumsum(log_pi.exp(), dim=-1)
            k = torch.searchsorted(cdf, uniform).clamp_(max=self.components - 1)
            sigma = log_sigma.gather(-1, k).exp()
            u = (mu.gather(-1, k) + temperature * sigma * eps.unsqueeze(-1)).squeeze(-1)
        return u

    def extra_repr(self) -> str:
        return f"dim={self.dim}, components={self.components}"
