"""Numerical precision of training and evaluation: float32, or bfloat16 for the s/t networks.

``"bf16"`` runs the s/t networks' convolutions and matrix products in bfloat16 under
:func:`torch.autocast` (on CPUs with AVX-512-BF16 or AMX, and on recent GPUs, at about twice the
float32 rate), while everything the likelihood is made of stays in float32: each coupling casts
its network's output back to the data's dtype before the tanh, so ``exp(s)``, the affine map, the
log-determinants, batch-norm bijectors, the logit transform, the prior and the loss are float32
(see :meth:`realnvp.bijectors.AffineCoupling.scale_and_shift`). Parameters, gradients and the
optimizer state stay float32 too; only the networks' arithmetic is cheaper.

Usage::

    from realnvp import precision

    with precision.autocast(x.device, "bf16"):
        loss = -model.log_prob(x).mean()
    loss.backward()          # outside the context, as torch.autocast recommends
"""

from __future__ import annotations

import contextlib

import torch

#: Names accepted by :func:`autocast`.
PRECISIONS = ("fp32", "bf16")


def check(precision: str) -> str:
    """Validate a precision name; returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """A context manager that runs the s/t networks in ``precision`` on ``device``.

    ``"fp32"`` is a no-op context; ``"bf16"`` is ``torch.autocast(device_type, torch.bfloat16)``.
    Wrap the forward pass (``log_prob``, ``sample``), not ``backward``.
    """
    check(precision)
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` has native bfloat16 arithmetic (otherwise bf16 runs, but emulated and
    slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        mkldnn = getattr(torch.backends, "mkldnn", None)
        fn = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        if fn is not None:
            try:
                return bool(fn())
            except RuntimeError:
                return False
        return bool(mkldnn and mkldnn.is_available())
    return False


__all__ = ["PRECISIONS", "autocast", "bf16_supported", "check"]
