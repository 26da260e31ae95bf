"""Evaluation: bits/dim over a whole split, averaged over dequantization noise.

For image data, each example's bits/dim is ``(−log p(y) + D ln K)/(D ln 2)`` with ``y = (x + u)/K``
(see :func:`realnvp.bits_per_dim`), averaged over ``dequant_samples`` draws of ``u``; the mean over
examples is reported with its standard error. For vector data the figures are the negative
log-likelihood in nats per example and ``nll / (D ln 2)`` bits per dimension.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from .bijectors import bits_per_dim
from .data import DataInfo
from .data.toy import toy_entropy
from .inputs import batch_parts, model_input
from .models import Flow
from .precision import autocast


def nats_per_example(bits_per_dim, num_dims: int):
    """Bits/dim back to nats per example, ``bpd · D · ln 2`` (continuous data: the NLL)."""
    return bits_per_dim * num_dims * math.log(2)


@torch.no_grad()
def per_draw_log_likelihoods(model: Flow, x: torch.Tensor, info: DataInfo, draws: int = 1,
                             precision: str = "fp32", context: torch.Tensor | None = None,
                             dequantizer=None) -> torch.Tensor:
    """``(B, draws)`` float64 bounds in nats, one per fresh dequantization ``y_s = (x + u_s)/K``,
    ``u_s ~ q(u|x)``: ``log p(y_s) − log q(u_s|x)`` (``log p(y_s | context)`` for a conditional
    model), the model's density on ``[0, 1)^D`` less the dequantizer's (``dequantizer=None``:
    uniform noise, ``log q = 0``); one draw, ``log p(x)``, for continuous data."""
    device = next(model.parameters()).device
    if context is not None:
        context = context.to(device)
    draws = draws if info.kind == "image" else 1
    out = []
    for _ in range(draws):
        y, log_q = model_input(x.to(device), info, dequantizer=dequantizer)
        with autocast(device, precision):
            log_p = model.log_prob(y, context).double()
        out.append(log_p if log_q is None else log_p - log_q.double())
    return torch.stack(out, dim=1)


def importance_weighted(log_p: torch.Tensor) -> torch.Tensor:
    """``log (1/S) Σ_s p(y_s)`` over the last dimension (``S`` draws): a tighter bound on the
    discrete log-likelihood than the mean of ``log p(y_s)`` (Jensen), equal to it for S = 1."""
    return torch.logsumexp(log_p, dim=-1) - math.log(log_p.shape[-1])


def per_example_bits_per_dim(model: Flow, x: torch.Tensor, info: DataInfo, dequant_samples: int = 1,
                             precision: str = "fp32", dequantizer=None,
                             context: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` bits/dim of a batch (nats → bits; discrete data: dequantized by ``dequantizer``,
    the bound averaged over the draws; a conditional model's given its ``(B, k)`` context)."""
    log_p = per_draw_log_likelihoods(model, x, info, dequant_samples, precision, context=context,
                                     dequantizer=dequantizer)
    return bits_per_dim(log_p, info.dim, info.num_levels).mean(dim=1)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return values.mean().item(), values.std().item() / math.sqrt(n) if n > 1 else float("nan")


def summarize(bpd: torch.Tensor, info: DataInfo, iw_bpd: torch.Tensor | None = None) -> dict:
    """Mean and standard error of per-example bits/dim (and nats for continuous data, with the
    generator's entropy and the gap to it for the 2-D toys; and of the importance-weighted
    bits/dim ``iw_bpd`` when given)."""
    mean, stderr = _mean_and_stderr(bpd)
    out = {"bits_per_dim": mean, "bits_per_dim_stderr": stderr, "num_examples": bpd.numel()}
    if info.num_levels is None:
        out["nll_nats"], out["nll_nats_stderr"] = _mean_and_stderr(nats_per_example(bpd, info.dim))
        entropy = toy_entropy(info.name)
        if entropy is not None:  # the floor of the NLL: how far the model is from the generator
            out["entropy_nats"], out["entropy_gap_nats"] = entropy, out["nll_nats"] - entropy
    if iw_bpd is not None:
        out["importance_weighted_bpd"], out["importance_weighted_bpd_stderr"] = _mean_and_stderr(iw_bpd)
    return out


@torch.no_grad()
def evaluate(model: Flow, dataset: Dataset, info: DataInfo, batch_size: int = 256,
             dequant_samples: int = 1, precision: str = "fp32", progress: bool = False,
             importance_samples: int | None = None, dequantizer=None) -> dict:
    """Bits/dim of ``dataset`` under ``model`` in eval mode (the mode is restored afterwards).

    Discrete data, dequantized by ``dequantizer`` (also in eval mode; ``None``: uniform noise):
    ``bits_per_dim`` is the mean over ``dequant_samples`` noise draws of the bound;
    ``importance_weighted_bpd`` the :func:`importance_weighted` estimate over the first
    ``importance_samples`` draws (default: as many; the draws are shared, so for S = S' the two
    come from the same noise).
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    iw = importance_samples if importance_samples is not None else dequant_samples
    discrete = info.kind == "image"
    draws = max(dequant_samples, iw) if discrete else 1
    modes = [(m, m.training) for m in (model, dequantizer) if m is not None]
    for m, _ in modes:
        m.eval()
    # Its own generator, so that iterating does not draw from the global RNG (which supplies the
    # dequantization noise): the figures then depend only on the seed, not on the batch size.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False)
    try:
        log_p = torch.cat([per_draw_log_likelihoods(model, x, info, draws, precision, context,
                                                    dequantizer).cpu()
                           for x, context in (batch_parts(b, info) for b in loader)])
    finally:
        for m, mode in modes:
            m.train(mode)
    bpd = bits_per_dim(log_p[:, :dequant_samples if discrete else 1], info.dim, info.num_levels)
    iw_bpd = bits_per_dim(importance_weighted(log_p[:, :iw]), info.dim, info.num_levels) \
        if discrete else None
    result = summarize(bpd.mean(dim=1), info, iw_bpd)
    result["dequant_samples"] = dequant_samples if discrete else 0
    if discrete:
        result["importance_samples"] = iw
    return result


def evaluate_side_by_side(model: Flow, dataset: Dataset, info: DataInfo, *args, dequantizer=None,
                          **kwargs) -> dict:
    """:func:`evaluate` (same arguments) with the run's ``dequantizer``; for a learned one the
    figures of uniform noise beside them, for the same model and data: ``uniform_bits_per_dim``
    and ``uniform_importance_weighted_bpd`` (with their standard errors), the paper's bound, and
    ``dequantization``: ``"variational"``."""
    result = evaluate(model, dataset, info, *args, dequantizer=dequantizer, **kwargs)
    if dequantizer is not None:
        uniform = evaluate(model, dataset, info, *args, **kwargs)
        result["dequantization"] = "variational"
        for key in ("bits_per_dim", "bits_per_dim_stderr", "importance_weighted_bpd",
                    "importance_weighted_bpd_stderr"):
            result[f"uniform_{key}"] = uniform[key]
    return result


def histogram_baseline(train_set: Dataset, test_set: Dataset, info: DataInfo) -> float | None:
    """Test bits/dim of the per-pixel histogram model: every dimension an independent categorical
    fitted on the training split (counts + 0.5). A flow should beat it by a wide margin.

    Only for discrete data held in memory (``dataset.data``); ``None`` otherwise.
    """
    train, test = getattr(train_set, "data", None), getattr(test_set, "data", None)
    if info.num_levels is None or train is None or test is None:
        return None
    k = info.num_levels
    train = train.reshape(train.shape[0], -1).long()
    test = test.reshape(test.shape[0], -1).long()
    counts = torch.full((train.shape[1], k), 0.5, dtype=torch.float64)
    counts.scatter_add_(1, train.T, torch.ones(train.T.shape, dtype=torch.float64))
    log_p = torch.log2(counts / counts.sum(dim=1, keepdim=True))
    return -log_p.gather(1, test.T).sum(dim=0).mean().item() / train.shape[1]
