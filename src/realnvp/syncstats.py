"""Batch statistics that are global across ``torchrun`` processes.

In distributed training every batch norm (the bijector ones and those inside the s/t networks)
normalises with the mean and variance of the *global* batch, gathered with a differentiable
all-reduce, so N processes with batch B train the same model as one process with batch N·B.
Outside distributed training this is plain ``torch.var_mean``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_var_mean(x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor, int]:
    """Biased variance and mean over ``dims`` (global over processes when distributed), and
    the number of values they were computed from."""
    count = 1
    for d in dims:
        count *= x.shape[d]
    if not _distributed():
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return var, mean, count
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_reduce

    mean = x.mean(dim=dims)
    mean_sq = x.pow(2).mean(dim=dims)
    total = torch.tensor([float(count)], device=x.device, dtype=x.dtype)
    dist.all_reduce(total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        packed = all_reduce(torch.cat([mean, mean_sq]) * count) / total
    c = mean.shape[0]
    g_mean, g_sq = packed[:c], packed[c:]
    return (g_sq - g_mean.pow(2)).clamp_min(0), g_mean, int(total.item())
