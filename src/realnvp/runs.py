"""What ties a run together: the model a configuration describes, how a batch of data becomes the
model's input, and loading a finished (or interrupted) run from its directory.

A run directory holds ``config.json`` (resolved configuration), ``data.json`` (the data set's
:class:`~realnvp.data.DataInfo`), ``checkpoints/{last,best}.safetensors``, ``metrics.csv``,
``samples/`` and, when training has finished, ``eval.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint
from .bijectors import Dequantize
from .config import Config, ConfigError
from .data import DataError, DataInfo
from .models import Flow, RealNVP, VectorRealNVP


class RunError(ValueError):
    """A run directory that is not a run, or a run that does not fit the code."""


def build_model(cfg: Config, info: DataInfo) -> Flow:
    """The flow that ``cfg`` describes for data shaped like ``info``."""
    try:
        if info.kind == "image":
            return RealNVP(
                info.shape, num_scales=cfg.num_scales, hidden_channels=cfg.hidden_channels,
                num_blocks=cfg.num_blocks, coupling=cfg.coupling, batch_norm=cfg.batch_norm,
                logit_alpha=cfg.logit_alpha,
            )
        return VectorRealNVP(
            info.dim, num_couplings=cfg.num_couplings, hidden=cfg.hidden, num_layers=cfg.num_layers,
            coupling=cfg.coupling, batch_norm=cfg.batch_norm, weight_norm=cfg.weight_norm,
        )
    except ValueError as e:
        raise ConfigError(f"cannot build the model for {info.name} {info.shape}: {e}") from e


def model_input(x: Tensor, info: DataInfo, dtype=torch.float32, shard: tuple[int, int] = (0, 1)
                ) -> tuple[Tensor, Tensor | None]:
    """A data batch to the model's input space.

    Images (integers in ``[0, K−1]``) are dequantized to ``(x + u)/K`` with fresh noise; the
    returned log-det of that scaling is ``−D ln K``. Vectors pass through (log-det ``None``).

    ``shard = (rank, world)``: this batch holds rows ``rank::world`` of a global batch (as the
    distributed sampler deals them out); the noise is drawn for the whole global batch and the
    same rows are kept, so every process count sees the same noise for the same example.
    """
    if info.kind != "image":
        return x.to(dtype), None
    rank, world = shard
    x = x.to(dtype)
    if world == 1:
        return Dequantize(info.num_levels)(x)
    noise = torch.rand((x.shape[0] * world, *x.shape[1:]), dtype=dtype, device=x.device)[rank::world]
    k = info.num_levels
    return (x + noise) / k, torch.full((x.shape[0],), -info.dim * math.log(k), device=x.device)


def to_pixels(y: Tensor, info: DataInfo) -> Tensor:
    """Model-space images (``[0, 1]`` up to the logit margin) to uint8 ``0…255`` for display."""
    k = info.num_levels or 256
    levels = torch.floor(y.clamp(0, 1) * k).clamp_(0, k - 1)
    return torch.round(levels * (255 / (k - 1))).to(torch.uint8)


def pixels_to_unit(x: Tensor, info: DataInfo) -> Tensor:
    """Integer pixels to the centre of their dequantization bins, ``(x + 0.5)/K`` (no noise)."""
    return (x.float() + 0.5) / info.num_levels


@dataclass
class Run:
    path: Path
    config: Config
    info: DataInfo
    model: Flow
    meta: dict

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints"


def read_run_files(path: str | Path) -> tuple[Path, Config, DataInfo]:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory not found: {path}")
    cfg_file, data_file = path / "config.json", path / "data.json"
    if not cfg_file.is_file() or not data_file.is_file():
        raise RunError(f"{path} is not a realnvp run (no config.json / data.json)")
    try:
        cfg = Config.from_dict(json.loads(cfg_file.read_text()))
        info = DataInfo.from_dict(json.loads(data_file.read_text()))
    except (json.JSONDecodeError, ConfigError, DataError, OSError) as e:
        raise RunError(f"{path} holds an unreadable run description: {e}") from e
    return path, cfg, info


def load_state(model: torch.nn.Module, tensors: dict, prefix: str, source: Path) -> None:
    """Load the ``prefix``-ed tensors into ``model``; a clear error if they do not fit."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
                  f"(e.g. {unexpected[:1]}), {len(wrong)} of the wrong shape (e.g. {wrong[:1]})")
        raise RunError(f"checkpoint {source} does not fit the model of this configuration: {detail}")
    model.load_state_dict(state)


def load_run(path: str | Path, which: str = "best", device: str | torch.device = "cpu",
             use_ema: bool = True, warn=print) -> Run:
    """The model of a run, from its ``best`` (or ``last``) checkpoint, in eval mode.

    With ``use_ema`` the moving average of the weights is loaded when the run kept one.
    """
    path, cfg, info = read_run_files(path)
    if which not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', got {which!r}")
    ckpt = path / "checkpoints" / f"{which}.safetensors"
    if not ckpt.exists() and not ckpt.with_suffix(".safetensors.prev").exists():
        raise RunError(f"{path} has no {which} checkpoint yet")
    try:
        tensors, meta, source = checkpoint.load_with_fallback(ckpt, warn=warn)
    except checkpoint.CheckpointError as e:
        raise RunError(str(e)) from e
    model = build_model(cfg, info)
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    load_state(model, tensors, prefix, source)
    return Run(path, cfg, info, model.to(device).eval(), meta)
