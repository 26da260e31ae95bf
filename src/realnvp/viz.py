"""Pictures with Pillow and numpy only: image grids, 2-D scatter plots, density maps, curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import replacing


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2,
               min_cell: int = 32) -> Image.Image:
    """uint8 images ``(N, C, H, W)`` (C = 1 or 3) to one grid picture.

    Small images are enlarged (nearest neighbour) so that each cell is at least ``min_cell``
    pixels wide; ``nrow`` images per row (default: a square-ish grid).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    zoom = max(1, math.ceil(min_cell / max(h, w)))
    arr = images.cpu().numpy().repeat(zoom, axis=2).repeat(zoom, axis=3)
    h, w = h * zoom, w * zoom
    grid = np.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y0:y0 + h, x0:x0 + w] = arr[i]
    mode = "L" if c == 1 else "RGB"
    return Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0), mode=mode)


def _bounds(points: np.ndarray, margin: float = 0.05) -> tuple[float, float, float, float]:
    lo = np.percentile(points, 0.5, axis=0)
    hi = np.percentile(points, 99.5, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def scatter_plot(points: torch.Tensor, size: int = 512, reference: torch.Tensor | None = None,
                 bounds: tuple[float, float, float, float] | None = None) -> Image.Image:
    """A scatter plot of 2-D points ``(N, 2)`` (first two columns used); ``reference`` points, if
    given, are drawn in grey underneath."""
    pts = points[:, :2].detach().cpu().double().numpy()
    ref = None if reference is None else reference[:, :2].detach().cpu().double().numpy()
    x0, x1, y0, y1 = bounds or _bounds(pts if ref is None else np.concatenate([pts, ref]))
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def to_px(p):
        u = (p[:, 0] - x0) / (x1 - x0) * (size - 1)
        v = (1 - (p[:, 1] - y0) / (y1 - y0)) * (size - 1)
        return np.stack([u, v], axis=1)

    for layer, colour in ((ref, (190, 190, 190)), (pts, (31, 90, 180))):
        if layer is None:
            continue
        for u, v in to_px(layer[np.isfinite(layer).all(axis=1)]):
            draw.ellipse((u - 1.2, v - 1.2, u + 1.2, v + 1.2), fill=colour)
    return img


@torch.no_grad()
def density_map(model, bounds: tuple[float, float, float, float], size: int = 256) -> Image.Image:
    """The model's density of 2-D data on a grid over ``bounds = (x0, x1, y0, y1)``, as a picture
    (dark = high density)."""
    x0, x1, y0, y1 = bounds
    device = next(model.parameters()).device
    xs = torch.linspace(x0, x1, size, device=device)
    ys = torch.linspace(y1, y0, size, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    was_training = model.training
    model.eval()
    try:
        p = torch.cat([model.log_prob(chunk).exp() for chunk in pts.split(8192)]).reshape(size, size)
    finally:
        model.train(was_training)
    p = (p / p.max().clamp_min(1e-30)).cpu().numpy()
    return Image.fromarray((255 * (1 - p) ** 2).astype(np.uint8), mode="L").convert("RGB")


def samples_and_density(model, samples: torch.Tensor, reference: torch.Tensor | None = None,
                        size: int = 512) -> Image.Image:
    """2-D samples (over ``reference`` data in grey, if given) beside the model's density, both
    drawn over the same region."""
    bounds = _bounds(torch.cat([samples, reference]).detach().cpu().double().numpy()
                     if reference is not None else samples.detach().cpu().double().numpy())
    pic = scatter_plot(samples, size=size, reference=reference, bounds=bounds)
    return side_by_side(pic, density_map(model, bounds, size=size))


def side_by_side(*images: Image.Image, pad: int = 8) -> Image.Image:
    h = max(im.height for im in images)
    out = Image.new("RGB", (sum(im.width for im in images) + pad * (len(images) - 1), h), "white")
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + pad
    return out


CURVE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def line_plot(series: dict[str, list[tuple[float, float]]], xlabel: str = "epoch",
              size: tuple[int, int] = (640, 400)) -> Image.Image:
    """Curves ``name -> [(x, y), ...]`` on shared axes (non-finite points left out), with the
    y range, the x range and a legend written in; e.g. train/validation bits/dim per epoch."""
    w, h, left, bottom, top, right = *size, 60, 30, 30, 20
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    points = {k: [(x, y) for x, y in v if math.isfinite(y)] for k, v in series.items()}
    every = [p for v in points.values() for p in v]
    if not every:
        draw.text((left, h // 2), "no finite values yet", fill="black")
        return img
    (x0, x1), (y0, y1) = [(min(c), max(c)) for c in zip(*every, strict=True)]
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((4, top), f"{y1:.4g}", fill="black")
    draw.text((4, h - bottom - 10), f"{y0:.4g}", fill="black")
    draw.text((left, h - bottom + 6), f"{xlabel} {x0:g}", fill="black")
    draw.text((w - right - 60, h - bottom + 6), f"{x1:g}", fill="black")
    for i, (name, pts) in enumerate(points.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((left + 10 + 140 * i, 8), name, fill=colour)
    return img


def save(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (see :mod:`realnvp.atomic`)."""
    with replacing(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
