"""Exporting a trained flow for serving: its density and its sampling path as ``torch.export``
programs (``.pt2``), checked against the eager model before they are written.

- ``density.pt2``: ``y (B, *event_shape) -> log p(y) (B,)`` in nats. For images ``y`` is in the
  model's space ``[0, 1)`` (dequantized data ``(x + u)/K``, or bin centres ``(x + 0.5)/K``);
  bits/dim are ``(−log p + D ln K)/(D ln 2)``.
- ``sample.pt2``: ``z (B, D) -> x (B, *event_shape)``, the inverse map; ``z ~ N(0, T² I)``.
- ``export.json``: the shapes, levels and the check's largest differences.

Both take any batch size from 1 to :data:`MAX_BATCH`, run the model in eval mode (running
batch-norm averages) without input validation (the programs hold no data-dependent checks). A
conditional model's programs take a second input, ``context (B, k)`` (``export.json``:
``context_features``): a class-conditional model's one-hot label, a tabular model's context
columns standardised with the training statistics (as its ``y`` is).

:func:`export_onnx` writes the density path alone as one ONNX file through PyTorch's exporter
(``torch.onnx.export``, the ``dynamo`` path), checked with onnxruntime (the ``onnx`` extra:
``pip install 'realnvp[onnx]'``); the shapes, levels and the check's difference go into the
model's metadata.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .models import Flow

MAX_BATCH = 4096
TOLERANCE = 1e-5
#: the ONNX density path's input names: ``y``, and a conditional flow's ``context``
ONNX_INPUTS = ("y", "context")


class ExportError(ValueError):
    """The exporter could not take the model, or the exported program disagrees with it."""


class _Path(nn.Module):
    """One of the flow's methods (``log_prob``, ``decode``) as a module to export: ``(t)``, or
    ``(t, context)`` for a conditional flow."""

    def __init__(self, flow: Flow, method: str):
        super().__init__()
        self.flow, self.method = flow, method

    def forward(self, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return getattr(self.flow, self.method)(t, context)


def _with_context(t: torch.Tensor, context: torch.Tensor | None, rows: slice = slice(None)) -> tuple:
    """The programs' inputs: ``(t,)`` or ``(t, context)``, rows ``rows`` of each."""
    return (t[rows],) if context is None else (t[rows], context[rows])


def _batch_shapes(args: tuple) -> dict:
    """Every input's first dimension is the one dynamic batch size."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {name: {0: batch} for name in ("t", "context")[:len(args)]}


def _export(module: nn.Module, example: tuple, check: tuple, name: str):
    try:
        program = torch.export.export(module, example, dynamic_shapes=_batch_shapes(example))
    except Exception as e:  # the exporter's many failure types; one line for the user
        raise ExportError(f"torch.export cannot take this model's {name} path: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    with torch.no_grad():
        diff = (program.module()(*check) - module(*check)).abs().max().item()
    if not diff <= TOLERANCE * max(1.0, module(*check).abs().max().item()):
        raise ExportError(f"the exported {name} path differs from the model by {diff:.3g}")
    return program, diff


def check_exportable(flow: Flow) -> None:
    """An :class:`ExportError` for a flow that the exporters cannot take, before any work."""
    from .bijectors import CNF

    if any(isinstance(m, CNF) for m in flow.modules()):
        raise ExportError("export does not take continuous-time flows (ffjord): an ODE solve runs "
                          "torchdiffeq's Python loop, whose steps depend on the data, and the "
                          "exporters trace a fixed graph")


def _servable(flow: Flow) -> Flow:
    """A copy of ``flow`` as the exporters take it: eval mode, no input checks, no gradients."""
    check_exportable(flow)
    flow = copy.deepcopy(flow).eval()
    flow.validate_args = False
    for p in flow.parameters():
        p.requires_grad_(False)
    return flow


def export(flow: Flow, inputs: torch.Tensor, out_dir: str | Path, num_levels: int | None,
           context: torch.Tensor | None = None) -> dict:
    """Write ``density.pt2``, ``sample.pt2`` and ``export.json`` for ``flow`` into ``out_dir``;
    ``inputs`` (model-space examples, e.g. test data, with their ``context`` for a conditional
    flow) check the density, latents drawn from the prior (with the same contexts) check the
    sampler. Returns ``export.json``'s contents."""
    flow = _servable(flow)
    out_dir = Path(out_dir)
    density, d_diff = _export(_Path(flow, "log_prob"), _with_context(inputs, context, slice(2)),
                              _with_context(inputs, context), "density")
    z = torch.randn(len(inputs), flow.num_dims, generator=torch.Generator().manual_seed(0)).to(inputs)
    sampler, s_diff = _export(_Path(flow, "decode"), _with_context(z, context, slice(2)),
                              _with_context(z, context), "sampling")
    for name, program in (("density.pt2", density), ("sample.pt2", sampler)):
        with atomic.replacing(out_dir / name) as tmp, _quiet():  # it warns of the temporary name
            torch.export.save(program, str(tmp))
    info = {"event_shape": list(flow.event_shape), "latent_dim": flow.num_dims,
            "context_features": flow.context_features, "num_levels": num_levels,
            "max_batch": MAX_BATCH, "units": "nats",
            "max_abs_difference": {"density": d_diff, "sample": s_diff}}
    atomic.write_text(out_dir / "export.json", json.dumps(info, indent=2) + "\n")
    return info


def _onnxruntime():
    """The ``onnxruntime`` module, once the exporter's ``onnx`` and ``onnxscript`` are known to be
    there; an :class:`ExportError` naming the extra when any is missing."""
    if torch.__version__ < "2.6":
        raise ExportError(f"ONNX export needs torch >= 2.6 (its dynamo exporter), this is "
                          f"{torch.__version__}: pip install 'realnvp[onnx]'")
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is "
                          "missing): pip install 'realnvp[onnx]'") from None
    return onnxruntime


@contextlib.contextmanager
def _quiet():
    """Hold back what the exporter prints and logs (graphs, warnings, the missing torchvision
    operators), so that a failure is the one line of :class:`ExportError`."""
    log, buf = logging.getLogger("torch"), io.StringIO()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _first_line(e: BaseException) -> str:
    """The exporter's own reason (the cause it wraps, when it wraps one), one line, no colours."""
    cause = e.__cause__ or e
    line = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().split("\n")[0]
    return f"{type(cause).__name__}: {line}".rstrip(": ")


def _onnx_program(flow: Flow, example: tuple):
    """The density path ``y[, context] -> log p(y[ | context])`` of a servable flow as a
    ``torch.onnx.ONNXProgram``."""
    try:
        with _quiet():
            return torch.onnx.export(_Path(flow, "log_prob"), example, dynamo=True,
                                     dynamic_shapes=_batch_shapes(example),
                                     input_names=list(ONNX_INPUTS[:len(example)]),
                                     output_names=["log_prob"], report=False, verbose=False)
    except Exception as e:  # the exporter's many failure types; one line for the user
        raise ExportError(f"the ONNX exporter cannot take this model's density path: "
                          f"{_first_line(e)}") from e


def _onnx_difference(program, path: Path, flow: Flow, inputs: tuple) -> float:
    """Save ``program`` to ``path`` and return the largest ``|onnxruntime − eager|`` of the
    densities of ``inputs`` (``(y,)`` or ``(y, context)``); an :class:`ExportError` beyond
    :data:`TOLERANCE` (relative to the largest density, as :func:`export` checks)."""
    with _quiet():
        program.save(str(path), external_data=False)
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(ONNX_INPUTS[:len(inputs)], inputs, strict=True)}
    got = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        want = flow.log_prob(*inputs)
    diff = (got - want).abs().max().item()
    if not diff <= TOLERANCE * max(1.0, want.abs().max().item()):
        raise ExportError(f"the ONNX density path differs from the model by {diff:.3g} nats")
    return diff


def export_onnx(flow: Flow, inputs: torch.Tensor, path: str | Path, num_levels: int | None,
                context: torch.Tensor | None = None) -> dict:
    """Write the density path of ``flow`` as the ONNX model ``path`` (exported and checked on the
    CPU): input ``y`` ``(B, *event_shape)`` float32 in model space (as ``density.pt2``; a
    conditional flow also ``context`` ``(B, k)``), output ``log_prob`` ``(B,)`` in nats, any batch
    size to :data:`MAX_BATCH`. onnxruntime's densities of ``inputs`` (model-space examples, e.g.
    test data, with their ``context``) must equal the eager model's (see
    :func:`_onnx_difference`) before the file is written. Returns what the model's metadata
    records under ``realnvp`` (JSON)."""
    _onnxruntime()
    flow = _servable(flow).cpu()
    inputs = tuple(t.float().cpu() for t in _with_context(inputs, context))
    program = _onnx_program(flow, tuple(t[:2] for t in inputs))
    info = {"event_shape": list(flow.event_shape), "context_features": flow.context_features,
            "num_levels": num_levels, "max_batch": MAX_BATCH, "units": "nats"}
    with atomic.replacing(path) as tmp:
        info["max_abs_difference"] = {"density": _onnx_difference(program, tmp, flow, inputs)}
        program.model.metadata_props["realnvp"] = json.dumps(info)
        with _quiet():
            program.save(str(tmp), external_data=False)
    return info
