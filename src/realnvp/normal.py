"""The Gaussian log-density, written once for the package: flows' base densities, the MoG base,
the VAE's posterior and prior, and the VI targets all use it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: Tensor, mean: Tensor | float | None = None,
                    log_std: Tensor | float | None = None) -> Tensor:
    """``log N(x; mean, exp(log_std)²)`` elementwise, in nats, broadcast over the three (``mean``
    0 and ``log_std`` 0 when ``None``)."""
    if mean is not None:
        x = x - mean
    if log_std is None:
        return -0.5 * (x * x + LOG_2PI)
    log_std = torch.as_tensor(log_std, dtype=x.dtype, device=x.device)
    x = x * torch.exp(-log_std)
    return -0.5 * (x * x + LOG_2PI) - log_std


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the latent: ``(B, D) -> (B,)`` in nats (float32 or more)."""
    return normal_log_prob(z.to(torch.promote_types(z.dtype, torch.float32))).sum(dim=1)
