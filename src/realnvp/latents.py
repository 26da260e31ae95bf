"""What each scale of a multi-scale flow encodes (RealNVP paper, App. D, "conceptual compression").

The latent of an image under a multi-scale flow is the concatenation of one part per scale
(:meth:`~realnvp.Flow.scale_slices`). Keeping the parts of the coarsest ``k`` scales and drawing
the others afresh from the prior (at a temperature) shows what those ``k`` scales determine: with
every scale kept the image comes back, with none it is a plain sample of the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .models import Flow


def kept_mask(slices: list[slice], keep: int, dim: int, device=None) -> Tensor:
    """``(D,)`` booleans: the latent coordinates of the coarsest ``keep`` scales (``slices`` as
    :meth:`~realnvp.Flow.scale_slices` gives them, finest first)."""
    if not 0 <= keep <= len(slices):
        raise ValueError(f"keep must be in [0, {len(slices)}], got {keep}")
    mask = torch.zeros(dim, dtype=torch.bool, device=device)
    for s in slices[len(slices) - keep:]:
        mask[s] = True
    return mask


def keep_scales(z: Tensor, noise: Tensor, slices: list[slice], keep: int) -> Tensor:
    """``noise`` ``(n, D)`` with the coordinates of the coarsest ``keep`` scales replaced by those
    of the one latent ``z`` ``(1, D)`` (or ``(D,)``): ``(n, D)``."""
    mask = kept_mask(slices, keep, noise.shape[1], noise.device)
    return torch.where(mask, z.reshape(1, -1).to(noise.dtype), noise)


@torch.no_grad()
def scale_rows(model: Flow, z: Tensor | None, n: int = 8, temperature: float = 1.0,
               generator: torch.Generator | None = None,
               context: Tensor | None = None) -> tuple[Tensor, list[int]]:
    """The scale view of one latent ``z`` ``(1, D)`` of a multi-scale ``model`` (eval mode); a
    conditional model's under one ``context`` ``(1, k)`` (``z``'s own), for every image.

    ``n`` draws ``ε ~ N(0, temperature² I)`` ``(n, D)`` are taken first from ``generator`` (the
    draws :meth:`~realnvp.Flow.sample` takes with the same generator state) and shared by every
    row; ``z = None`` then draws the latent of a sample of the model, at the same temperature.
    Row ``r`` keeps the coarsest ``k = S − r`` of the ``S`` scales of ``z`` and takes the rest from
    ``ε``. Returns the decoded images ``((S + 1)·n, *event_shape)``, row by row (the first row
    ``n`` copies of ``decode(z)``, the last the plain samples ``decode(ε)``), and the ``k`` of each
    row. Each row is decoded as one batch of ``n``.
    """
    slices = model.scale_slices()
    noise = model._prior_draw(n, temperature, generator)
    if z is None:
        z = model._prior_draw(1, temperature, generator)
    keeps = list(range(len(slices), -1, -1))
    rows_context = None if context is None else context.reshape(1, -1).expand(n, -1)
    images = [model.decode(keep_scales(z, noise, slices, k), rows_context) for k in keeps]
    return torch.cat(images), keeps
