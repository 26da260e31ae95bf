"""The normaliser of a 2-D target by quadrature, and pictures of ``q`` beside the target."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..viz import side_by_side


def widened(bounds: tuple[float, float, float, float], factor: float = 1.5):
    """``bounds`` ``(x0, x1, y0, y1)`` about the same centre, each side ``factor`` times as long."""
    x0, x1, y0, y1 = bounds
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * factor, (y1 - y0) / 2 * factor
    return cx - hx, cx + hx, cy - hy, cy + hy


@torch.no_grad()
def grid_log_prob(log_target, bounds, size: int) -> tuple[torch.Tensor, float]:
    """``log p̃`` at the centres of a ``size × size`` grid over ``bounds`` (float64, rows from the
    top: ``y`` decreasing), and the log of a cell's area."""
    x0, x1, y0, y1 = bounds
    dx, dy = (x1 - x0) / size, (y1 - y0) / size
    xs = torch.linspace(x0 + dx / 2, x1 - dx / 2, size, dtype=torch.float64)
    ys = torch.linspace(y1 - dy / 2, y0 + dy / 2, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    lp = torch.cat([log_target(c).double() for c in pts.split(1 << 16)]).reshape(size, size)
    return lp, math.log(dx * dy)


def log_normaliser(log_target, bounds, size: int = 1200, widen: float = 1.5) -> float:
    """``log ∫ p̃`` by the midpoint rule on a ``size × size`` grid over ``bounds`` widened by
    ``widen`` (so that the tails past a picture's box are counted)."""
    lp, log_cell = grid_log_prob(log_target, widened(bounds, widen), size)
    return float(torch.logsumexp(lp.reshape(-1), 0)) + log_cell


def _heat(p: np.ndarray, size: int) -> Image.Image:
    p = p / max(float(p.max()), 1e-300)
    img = Image.fromarray((255 * (1 - p) ** 2).astype(np.uint8), mode="L").convert("RGB")
    return img.resize((size, size), Image.NEAREST)


@torch.no_grad()
def q_beside_target(q, log_target, bounds, n: int = 100_000, cells: int = 128, size: int = 384,
                    generator=None) -> Image.Image:
    """A histogram of ``n`` samples of ``q`` (left) beside the target's density (right), both on
    the same ``cells × cells`` grid over ``bounds`` (dark = dense)."""
    chunks = []
    for m in [min(16384, n - i) for i in range(0, n, 16384)]:
        chunks.append(q.rsample_and_log_prob(m, generator=generator)[0][:, :2].double().cpu())
    z = torch.cat(chunks).numpy()
    x0, x1, y0, y1 = bounds
    hist, _, _ = np.histogram2d(z[:, 1], z[:, 0], bins=cells, range=[[y0, y1], [x0, x1]])
    lp, _ = grid_log_prob(lambda t: log_target(t.to(_dtype(q))), bounds, cells)
    p = torch.exp(lp - lp.max()).numpy()
    return side_by_side(_heat(hist[::-1], size), _heat(p, size))


def _dtype(q) -> torch.dtype:
    for t in q.parameters():
        return t.dtype
    return torch.float32
