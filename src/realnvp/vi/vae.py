"""Amortised variational inference: a VAE whose posterior ``q(z|x)`` is a flow (Rezende &
Mohamed, 2015, §6.2 / Table 2; Kingma et al., 2016 for IAF).

Generative model: ``p(z) = N(0, I)`` on ``latent`` dimensions, ``p(x|z) = Π Bernoulli(x_d;
σ(f(z)_d))`` with ``f`` an MLP decoder, on binarised images flattened to ``(B, D)``.

Inference: an MLP encoder maps ``x`` to the base ``N(μ(x), diag σ(x)²)`` and, by posterior kind:

- ``gaussian``: nothing more (the diagonal Gaussian posterior);
- ``planar`` / ``radial``: the per-example parameters of ``length`` layers (R&M: "the parameters
  of the flow are output by the inference network"): planar ``(u, w, b)``, radial
  ``(z₀, α̂, β̂)``, constrained as in :mod:`realnvp.bijectors.planar` / ``radial``;
- ``iaf`` / ``realnvp``: a feature ``h(x)`` that conditions ``length`` IAF layers (MADEs with a
  context input) or affine couplings (s/t networks with a context input) through
  :class:`~realnvp.nets.context.ContextSlot` (Kingma et al. 2016, §4). The IAF's transformer is
  ``iaf_transformer``: ``'affine'`` (the form of Kingma et al.'s code, ``(z − m)/exp(s)`` with
  small initial outputs) or ``'gated'``, the paper's update ``σ⊙z + (1 − σ)⊙m`` (eq. 14); see
  :mod:`realnvp.bijectors.autoregressive`.

``z₀ = μ + σ·ε``, ``z_K = f_K ∘ … ∘ f_1(z₀)``, ``log q(z_K|x) = log N(z₀; μ, σ²) − Σ log|det ∂f_k|``.
:meth:`VAE.log_weights` gives ``log w = log p(x, z_K) − log q(z_K|x)`` for ``S`` draws per image
(:meth:`VAE.log_densities` the two terms apart, for R&M's annealed objective): its mean is the
ELBO, ``logsumexp − log S`` the importance-weighted bound (Burda et al. 2016).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import IAF, VectorRealNVP
from ..normal import normal_log_prob, standard_normal_log_prob

POSTERIORS = ("gaussian", "planar", "radial", "iaf", "realnvp")
IAF_TRANSFORMERS = ("affine", "gated")


def binarize(levels: Tensor, num_levels: int, generator=None) -> Tensor:
    """Dynamic binarisation: ``Bernoulli(levels / (K − 1))`` draws, a float tensor of 0/1 of
    ``levels``' shape (resampled every call)."""
    p = levels.float() / (num_levels - 1)
    return torch.bernoulli(p, generator=generator)


def planar_step(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example planar layer (R&M §4.1): ``z (B, d)``, ``u, w (B, d)``, ``b (B,)`` ->
    ``(z + û·tanh(wᵀz + b), log|1 + (1 − tanh²)·wᵀû|)`` with ``wᵀû = −1 + softplus(wᵀu) > −1``."""
    wu = (w * u).sum(1)
    tiny = torch.finfo(w.dtype).tiny
    u_hat = u + ((-1 + F.softplus(wu) - wu) / (w * w).sum(1).clamp_min(tiny)).unsqueeze(1) * w
    a = (w * z).sum(1) + b
    t = torch.tanh(a)
    return z + t.unsqueeze(1) * u_hat, torch.log1p((1 - t.pow(2)) * (w * u_hat).sum(1))


def radial_step(z: Tensor, z0: Tensor, alpha_raw: Tensor, beta_raw: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example radial layer (R&M §4.1): ``z, z0 (B, d)``, ``alpha_raw, beta_raw (B,)`` ->
    ``(z + β·(z − z₀)/(α + r), (d − 1)·log(1 + βh) + log(1 + αβh²))``, ``α = softplus(α̂)``,
    ``β = −α + softplus(β̂)``, ``h = 1/(α + r)``, ``r = ‖z − z₀‖``."""
    alpha = F.softplus(alpha_raw)
    beta = -alpha + F.softplus(beta_raw)
    diff = z - z0
    h = 1 / (alpha + diff.norm(dim=1))
    log_det = (z.shape[1] - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h.pow(2))
    return z + (beta * h).unsqueeze(1) * diff, log_det


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ELU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def amortised_sizes(kind: str, latent: int, length: int) -> int:
    """Per-example flow parameters the encoder outputs for a ``planar``/``radial`` posterior."""
    per_layer = {"planar": 2 * latent + 1, "radial": latent + 2}.get(kind, 0)
    return per_layer * length


class VAE(nn.Module):
    """Encoder, flow posterior and Bernoulli decoder on ``(B, features)`` binary data.

    Args:
        features: ``D``, the flattened image size.
        latent: ``d``, the latent dimension (R&M: 40 on MNIST).
        posterior: one of :data:`POSTERIORS`.
        length: flow layers ``K`` (ignored by ``gaussian``).
        hidden: width of the encoder's and decoder's two hidden layers.
        flow_hidden: width of the IAF MADEs / coupling networks, and of the context ``h(x)``.
        iaf_transformer: one of :data:`IAF_TRANSFORMERS`, the IAF layers' transformer.
    """

    def __init__(self, features: int, latent: int = 40, posterior: str = "gaussian", length: int = 1,
                 hidden: int = 400, flow_hidden: int = 128, iaf_transformer: str = "affine"):
        super().__init__()
        check_posterior(posterior, length, latent, iaf_transformer)
        self.config = dict(features=features, latent=latent, posterior=posterior, length=length,
                           hidden=hidden, flow_hidden=flow_hidden, iaf_transformer=iaf_transformer)
        self.features, self.latent, self.kind, self.length = features, latent, posterior, length
        self.body = mlp([features, hidden, hidden])
        self.body.append(nn.ELU())
        extra = amortised_sizes(posterior, latent, length)
        context = flow_hidden if posterior in ("iaf", "realnvp") else 0
        self.head = nn.Linear(hidden, 2 * latent + extra + context)
        self.flow = None
        if posterior == "iaf":
            self.flow = IAF(latent, num_layers=length, hidden=flow_hidden, transformer=iaf_transformer,
                            context_features=context)
        elif posterior == "realnvp":
            self.flow = VectorRealNVP(latent, num_couplings=length, hidden=flow_hidden, batch_norm=False,
                                      weight_norm=False, context_features=context)
        self.decoder = mlp([latent, hidden, hidden, features])

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(μ, log σ, rest)``: ``(B, d)``, ``(B, d)``, and ``(B, P)`` flow parameters or
        context (``P = 0`` for ``gaussian``)."""
        out = self.head(self.body(x))
        d = self.latent
        return out[:, :d], out[:, d:2 * d], out[:, 2 * d:]

    def transform(self, z0: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_K, Σ log|det ∂f_k/∂z|)`` of the posterior's flow on ``z0 (B, d)``, with the
        encoder's per-example ``rest (B, P)``."""
        log_det = z0.new_zeros(z0.shape[0])
        if self.kind in ("planar", "radial"):
            d, z = self.latent, z0
            params = rest.reshape(z0.shape[0], self.length, -1)
            for k in range(self.length):
                p = params[:, k]
                if self.kind == "planar":
                    z, ld = planar_step(z, p[:, :d], p[:, d:2 * d], p[:, 2 * d])
                else:
                    z, ld = radial_step(z, p[:, :d], p[:, d], p[:, d + 1])
                log_det = log_det + ld
            return z, log_det
        if self.flow is not None:
            self.flow._condition(rest, z0.shape[0])
            z, ld = self.flow.bijector.inverse(z0)  # the sampling direction: one pass per layer
            return z, log_det + ld
        return z0, log_det

    def sample(self, n: int, temperature: float = 1.0, generator=None) -> Tensor:
        """``(n, D)`` Bernoulli means ``sigmoid(decoder(z))`` of ``z ~ N(0, T²·I)``, the prior at
        temperature ``T``: the decoder's expected image (what VAE papers picture) for each draw."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(temperature * z))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z) + log p(z)`` for ``x (B, D)`` binary and ``z (B, d)``: ``(B,)``."""
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        return log_px + standard_normal_log_prob(z)

    def log_densities(self, x: Tensor, samples: int = 1, generator=None) -> tuple[Tensor, Tensor]:
        """``(log p(x, z), log q(z|x))`` at ``samples`` reparametrised draws ``z ~ q(z|x)`` per
        image: ``(B, samples)`` each; differentiable."""
        b, s = x.shape[0], samples
        mu, log_sigma, rest = (t.repeat_interleave(s, 0) for t in self.encode(x))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + log_sigma.exp() * eps
        log_q0 = normal_log_prob(eps).sum(1) - log_sigma.sum(1)  # log N(z0; μ, σ²)
        z, log_det = self.transform(z0, rest)
        log_p = self.log_joint(x.repeat_interleave(s, 0), z)
        return log_p.reshape(b, s), (log_q0 - log_det).reshape(b, s)

    def log_weights(self, x: Tensor, samples: int = 1, generator=None) -> Tensor:
        """``log p(x, z) − log q(z|x)`` for ``samples`` reparametrised draws per image:
        ``(B, samples)``; differentiable."""
        log_p, log_q = self.log_densities(x, samples, generator)
        return log_p - log_q


def check_posterior(kind: str, length: int, latent: int, iaf_transformer: str = "affine") -> None:
    """A ``ValueError`` (one line) for an unknown posterior or IAF transformer, ``length < 1``,
    or a latent too small for couplings."""
    if kind not in POSTERIORS:
        raise ValueError(f"unknown posterior {kind!r}; choose one of {', '.join(POSTERIORS)}")
    if iaf_transformer not in IAF_TRANSFORMERS:
        raise ValueError(f"unknown IAF transformer {iaf_transformer!r}; choose one of "
                         f"{', '.join(IAF_TRANSFORMERS)}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"the posterior needs length >= 1, got {length!r}")
    if latent < 1 or (kind == "realnvp" and latent < 2):
        raise ValueError(f"a {kind} posterior needs latent >= {2 if kind == 'realnvp' else 1}, "
                         f"got {latent}")


@torch.no_grad()
def bounds(vae: VAE, x: Tensor, samples: int, chunk: int = 50_000, generator=None) -> tuple[Tensor, Tensor]:
    """``(ELBO, importance-weighted bound)`` per image, ``(B,)`` each, in nats, from the same
    ``samples`` draws per image (the ELBO: their mean log weight; ``samples = 1``: both equal);
    at most ``chunk`` draws per pass."""
    per = max(1, chunk // max(1, x.shape[0]))
    parts, done = [], 0
    while done < samples:
        m = min(per, samples - done)
        parts.append(vae.log_weights(x, m, generator).double())
        done += m
    log_w = torch.cat(parts, 1)
    return log_w.mean(1), torch.logsumexp(log_w, 1) - math.log(samples)
