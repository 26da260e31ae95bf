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
from .inputs import model_input
from .models import Flow
from .precision import autocast


def nats_per_example(bits_per_dim, num_dims: int):
    """Bits/dim back to nats per example, ``bpd · D · ln 2`` (continuous data: the NLL)."""
    return bits_per_dim * num_dims * math.log(2)


@torch.no_grad()
def per_example_bits_per_dim(model: Flow, x: torch.Tensor, info: DataInfo, dequant_samples: int = 1,
                             precision: str = "fp32") -> torch.Tensor:
    """``(B,)`` bits/dim of a batch (nats → bits; discrete data: dequantized, noise averaged)."""
    device = next(model.parameters()).device
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=device)
    draws = dequant_samples if info.kind == "image" else 1
    for _ in range(draws):
        y, _ = model_input(x.to(device), info)
        with autocast(device, precision):
            log_p = model.log_prob(y)
        total += bits_per_dim(log_p.double(), info.dim, info.num_levels)
    return total / draws


def summarize(bpd: torch.Tensor, info: DataInfo) -> dict:
    """Mean and standard error of per-example bits/dim (and nats for continuous data)."""
    n = bpd.numel()
    mean = bpd.mean().item()
    stderr = bpd.std().item() / math.sqrt(n) if n > 1 else float("nan")
    out = {"bits_per_dim": mean, "bits_per_dim_stderr": stderr, "num_examples": n}
    if info.num_levels is None:
        nats = nats_per_example(bpd, info.dim)
        out["nll_nats"] = nats.mean().item()
        out["nll_nats_stderr"] = nats.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return out


@torch.no_grad()
def evaluate(model: Flow, dataset: Dataset, info: DataInfo, batch_size: int = 256,
             dequant_samples: int = 1, precision: str = "fp32", progress: bool = False) -> dict:
    """Bits/dim of ``dataset`` under ``model`` in eval mode (the mode is restored afterwards)."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    was_training = model.training
    model.eval()
    # Its own generator, so that iterating does not draw from the global RNG (which supplies the
    # dequantization noise): the figures then depend only on the seed, not on the batch size.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False)
    try:
        bpd = torch.cat([per_example_bits_per_dim(model, x, info, dequant_samples, precision).cpu()
                         for x in loader])
    finally:
        model.train(was_training)
    result = summarize(bpd, info)
    result["dequant_samples"] = dequant_samples if info.kind == "image" else 0
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
