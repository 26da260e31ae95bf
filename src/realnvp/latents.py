"""Views of a flow's latent space: the manifold through four examples (RealNVP paper, Fig. 6) and
what each scale of a multi-scale flow encodes (App. D, "conceptual compression").

The latent of an image under a multi-scale flow is the concatenation of one part per scale
(:meth:`~realnvp.Flow.scale_slices`). Keeping the parts of the coarsest ``k`` scales and drawing
the others afresh from the prior (at a temperature) shows what those ``k`` scales determine: with
every scale kept the image comes back, with none it is a plain sample of the model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .models import Flow


def _repeated(context: Tensor | None, n: int) -> Tensor | None:
    """One context ``(1, k)`` (or ``(k,)``) for ``n`` rows: ``(n, k)``; ``None`` stays ``None``."""
    return None if context is None else context.reshape(1, -1).expand(n, -1)


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
    images = [model.decode(keep_scales(z, noise, slices, k), _repeated(context, n)) for k in keeps]
    return torch.cat(images), keeps


def manifold_latents(z: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """The paper's Figure 6 manifold from four latents ``z = (z1, z2, z3, z4)``, shape (4, D):
    ``cos φ (cos φ' z1 + sin φ' z2) + sin φ (cos φ' z3 + sin φ' z4)`` for φ, φ' on a
    ``steps × steps`` grid over ``[0, π/2]``; returns ``(steps², D)``, row-major in φ."""
    if z.shape[0] != 4:
        raise ValueError(f"need exactly 4 latents, got {z.shape[0]}")
    phis = torch.linspace(0, math.pi / 2, steps, dtype=z.dtype, device=z.device)
    rows = []
    for phi in phis:
        for phi2 in phis:
            a = torch.cos(phi2) * z[0] + torch.sin(phi2) * z[1]
            b = torch.cos(phi2) * z[2] + torch.sin(phi2) * z[3]
            rows.append(torch.cos(phi) * a + torch.sin(phi) * b)
    return torch.stack(rows)


@torch.no_grad()
def manifold(model: Flow, x: Tensor, steps: int = 8, context: Tensor | None = None) -> Tensor:
    """The images of the Figure 6 manifold through four examples ``x`` ``(4, *event_shape)`` (in
    the model's input units) of ``model`` (eval mode): ``(steps², *event_shape)``, row-major in φ,
    the corners ``x`` itself (up to the round trip's error). A conditional model encodes the four
    and decodes the whole grid under one ``context`` ``(1, k)``."""
    z = model.encode(x, _repeated(context, 4))
    return model.decode(manifold_latents(z, steps), _repeated(context, steps * steps))
