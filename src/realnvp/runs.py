"""A run on disk: reading a finished (or interrupted) run from its directory.

A run directory holds ``config.json`` (resolved configuration), ``data.json`` (the data set's
:class:`~realnvp.data.DataInfo`), ``checkpoints/{last,best}.safetensors``, ``metrics.csv``,
``samples/`` and, when training has finished, ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint
from .config import Config, ConfigError
from .data import DataError, DataInfo
from .models import Flow
from .models.build import build_dequantizer, build_model

#: The checkpoints a run keeps: the last one written, and the one with the best selection score.
CHECKPOINTS = ("best", "last")


class RunError(ValueError):
    """A run directory that is not a run, or a run that does not fit the code."""


@dataclass
class Run:
    path: Path
    config: Config
    info: DataInfo
    model: Flow
    meta: dict
    #: the learned ``q(u|x)`` of a ``dequantization = variational`` run (eval mode); ``None``
    #: for uniform noise
    dequantizer: torch.nn.Module | None = None

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
        saved = json.loads(cfg_file.read_text())
        if isinstance(saved, dict):  # runs from before validation splits trained on all of train
            saved.setdefault("valid_size", 0)
        cfg = Config.from_dict(saved)
        info = DataInfo.from_dict(json.loads(data_file.read_text()))
    except (json.JSONDecodeError, ConfigError, DataError, OSError) as e:
        raise RunError(f"{path} holds an unreadable run description: {e}") from e
    return path, cfg, info


def is_fit_run(path: Path) -> bool:
    """Whether ``path`` is a run of ``realnvp fit`` (a posterior fitted to a target, no data)."""
    from .training.variational import FIT_FILE

    return (path / FIT_FILE).is_file()


def is_vae_run(path: Path) -> bool:
    """Whether ``path`` is a run of ``realnvp vae`` (a VAE, not a flow)."""
    from .training.vae import VAE_FILE

    return (path / VAE_FILE).is_file()


def run_model(path: Path, cfg: Config, info: DataInfo) -> torch.nn.Module:
    """The (untrained) model of a run: the posterior of a ``realnvp fit`` run, the VAE of a
    ``realnvp vae`` run, the configuration's flow otherwise."""
    if is_vae_run(path):
        from .training.vae import read_spec, vae_from_spec

        return vae_from_spec(read_spec(path), info)
    if is_fit_run(path):
        from .training.variational import posterior_from_spec, read_fit_spec

        return posterior_from_spec(read_fit_spec(path), info.dim)
    return build_model(cfg, info)


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
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    ckpt = path / "checkpoints" / f"{which}.safetensors"
    if not checkpoint.exists(ckpt):
        hint = ("; it is written when an epoch ends, and the last checkpoint holds the latest "
                "weights (--checkpoint last)"
                if which == "best" and checkpoint.exists(ckpt.with_name("last.safetensors")) else "")
        raise RunError(f"{path} has no {which} checkpoint yet{hint}")
    try:
        tensors, meta, source = checkpoint.load_with_fallback(ckpt, warn=warn)
    except checkpoint.CheckpointError as e:
        raise RunError(str(e)) from e
    model = run_model(path, cfg, info)
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    load_state(model, tensors, prefix, source)
    dequantizer = None if is_fit_run(path) or is_vae_run(path) else build_dequantizer(cfg, info)
    if dequantizer is not None:
        load_state(dequantizer, tensors, "objective.dequantizer.", source)
        dequantizer = dequantizer.to(device).eval()
    return Run(path, cfg, info, model.to(device).eval(), meta, dequantizer)
