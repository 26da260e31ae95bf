"""Estimators of reverse-KL variational inference, from samples of ``q`` and their log-densities.

With ``z ~ q`` (reparametrised), ``log w = log p̃(z) − log q(z)``:

- the ELBO ``E_q[log p̃ − log q] = log Z − KL(q‖p)``; its negative is the reverse-KL objective
  ``E_q[log q − log p̃]`` (one sample or the mean of many: :func:`elbo`);
- the importance-weighted bound (Burda et al., 2016) ``E[log (1/S) Σₛ wₛ]`` over groups of ``S``
  samples (:func:`importance_weighted_bound`): ≥ the ELBO, increasing in ``S`` and tending to
  ``log Z``;
- ``KL(q‖p) = −ELBO + log Z`` where ``log Z`` is known (:func:`reverse_kl`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.flow import Flow


class NoSamplingDirection(ValueError):
    """A posterior that cannot draw reparametrised samples with their log-density."""


def draw(q: Flow, n: int, generator=None) -> tuple[Tensor, Tensor]:
    """``n`` reparametrised samples of ``q`` and ``log q`` at them (one pass through the sampling
    direction); a flow without one is a :class:`NoSamplingDirection` error."""
    if not callable(getattr(q, "rsample_and_log_prob", None)):
        raise NoSamplingDirection(f"{type(q).__name__} is not a flow with a sampling direction "
                                  "(rsample_and_log_prob)")
    try:
        return q.rsample_and_log_prob(n, generator=generator)
    except NotImplementedError as e:
        raise NoSamplingDirection(f"{type(q).__name__} cannot be a variational posterior: a layer "
                                  f"of it has no sampling direction (latent to data) ({e})") from None


def log_weights(q: Flow, log_target, n: int, generator=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(z, log q(z), log p̃(z))`` for ``n`` samples ``z ~ q``."""
    z, log_q = draw(q, n, generator)
    return z, log_q, log_target(z).to(log_q.dtype)


def elbo(log_p: Tensor, log_q: Tensor, beta: float = 1.0) -> Tensor:
    """The (annealed) ELBO estimate ``mean(β·log p̃ − log q)``: a scalar; ``β < 1`` weights the
    target less (R&M's annealing)."""
    return (beta * log_p - log_q).mean()


def annealed_beta(step: int, anneal_steps: int, beta0: float = 0.01) -> float:
    """R&M's annealing (2015, §6): the target's weight ``β_t = min(1, β₀ + t/anneal_steps)`` at
    optimizer step ``t`` (``anneal_steps = 0``: 1 throughout)."""
    if not anneal_steps:
        return 1.0
    return min(1.0, beta0 + step / anneal_steps)


def importance_weighted_bound(log_p: Tensor, log_q: Tensor, samples: int) -> Tensor:
    """``log (1/S) Σₛ p̃(zₛ)/q(zₛ)`` for each group of ``S = samples`` consecutive samples:
    ``(n / S,)``. ``samples = 1`` gives the one-sample ELBO terms."""
    n = log_p.shape[0]
    if samples < 1 or n % samples:
        raise ValueError(f"{n} samples do not split into groups of {samples}")
    log_w = (log_p - log_q).reshape(n // samples, samples)
    return torch.logsumexp(log_w, dim=1) - math.log(samples)


def reverse_kl(log_p: Tensor, log_q: Tensor, log_z: float) -> Tensor:
    """``KL(q‖p) = E_q[log q − log p̃] + log Z``, estimated from samples of ``q``: a scalar."""
    return (log_q - log_p).mean() + log_z


@torch.no_grad()
def estimate(q: Flow, log_target, n: int, samples: int = 1, log_z: float | None = None,
             batch: int = 8192, generator=None) -> dict:
    """Figures of ``q`` against ``log_target`` from ``n`` fresh samples (in batches of ``batch``):
    ``neg_elbo`` (and its standard error), ``iw_bound`` with ``samples`` per group (when > 1),
    ``kl`` (when ``log_z`` is given; its standard error equals ``neg_elbo``'s), ``ess`` (the
    effective sample size fraction of the importance weights)."""
    terms, iw, log_ws = [], [], []
    batch = max(samples, batch // samples * samples)
    done = 0
    while done < n:
        m = min(batch, n - done)
        m = max(samples, m // samples * samples)
        _, log_q, log_p = log_weights(q, log_target, m, generator)
        terms.append((log_q - log_p).double())
        log_ws.append((log_p - log_q).double())
        if samples > 1:
            iw.append(importance_weighted_bound(log_p.double(), log_q.double(), samples))
        done += m
    t, lw = torch.cat(terms), torch.cat(log_ws)
    finite = torch.isfinite(t)
    out = {"num_samples": int(t.numel()), "neg_elbo": float(t.mean()),
           "neg_elbo_stderr": float(t[finite].std() / math.sqrt(max(int(finite.sum()), 1)))
           if t.numel() > 1 else math.nan,
           "ess": float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / lw.numel())}
    if samples > 1:
        b = torch.cat(iw)
        out.update(iw_bound=float(b.mean()), iw_samples=samples)
    if log_z is not None:
        out.update(kl=out["neg_elbo"] + log_z, log_z=float(log_z))
    return out
