"""Exporting a trained flow for serving: its density and its sampling path as ``torch.export``
programs (``.pt2``), checked against the eager model before they are written.

- ``density.pt2``: ``y (B, *event_shape) -> log p(y) (B,)`` in nats. For images ``y`` is in the
  model's space ``[0, 1)`` (dequantized data ``(x + u)/K``, or bin centres ``(x + 0.5)/K``);
  bits/dim are ``(−log p + D ln K)/(D ln 2)``.
- ``sample.pt2``: ``z (B, D) -> x (B, *event_shape)``, the inverse map; ``z ~ N(0, T² I)``.
- ``export.json``: the shapes, levels and the check's largest differences.

Both take any batch size from 1 to :data:`MAX_BATCH`, run the model in eval mode (running
batch-norm averages) without input validation (the programs hold no data-dependent checks).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .models import Flow

MAX_BATCH = 4096
TOLERANCE = 1e-5


class ExportError(ValueError):
    """The exporter could not take the model, or the exported program disagrees with it."""


class _Path(nn.Module):
    """One of the flow's methods (``log_prob``, ``decode``) as a module to export."""

    def __init__(self, flow: Flow, method: str):
        super().__init__()
        self.flow, self.method = flow, method

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return getattr(self.flow, self.method)(t)


def _export(module: nn.Module, example: torch.Tensor, check: torch.Tensor, name: str):
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # the exporter's many failure types; one line for the user
        raise ExportError(f"torch.export cannot take this model's {name} path: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    with torch.no_grad():
        diff = (program.module()(check) - module(check)).abs().max().item()
    if not diff <= TOLERANCE * max(1.0, module(check).abs().max().item()):
        raise ExportError(f"the exported {name} path differs from the model by {diff:.3g}")
    return program, diff


def export(flow: Flow, inputs: torch.Tensor, out_dir: str | Path, num_levels: int | None) -> dict:
    """Write ``density.pt2``, ``sample.pt2`` and ``export.json`` for ``flow`` into ``out_dir``;
    ``inputs`` (model-space examples, e.g. test data) check the density, latents drawn from the
    prior check the sampler. Returns ``export.json``'s contents."""
    flow = copy.deepcopy(flow).eval()
    flow.validate_args = False
    for p in flow.parameters():
        p.requires_grad_(False)
    out_dir = Path(out_dir)
    density, d_diff = _export(_Path(flow, "log_prob"), inputs[:2], inputs, "density")
    z = torch.randn(len(inputs), flow.num_dims, generator=torch.Generator().manual_seed(0))
    sampler, s_diff = _export(_Path(flow, "decode"), z[:2], z, "sampling")
    for name, program in (("density.pt2", density), ("sample.pt2", sampler)):
        with atomic.replacing(out_dir / name) as tmp:
            torch.export.save(program, str(tmp))
    info = {"event_shape": list(flow.event_shape), "latent_dim": flow.num_dims,
            "num_levels": num_levels, "max_batch": MAX_BATCH, "units": "nats",
            "max_abs_difference": {"density": d_diff, "sample": s_diff}}
    atomic.write_text(out_dir / "export.json", json.dumps(info, indent=2) + "\n")
    return info
