"""The flow a run's configuration describes, for data shaped like the data set's."""

from __future__ import annotations

from ..config import Config, ConfigError
from ..data import DataInfo
from .flow import Flow
from .image import RealNVP
from .vector import VectorRealNVP


def build_model(cfg: Config, info: DataInfo) -> Flow:
    """The multi-scale :class:`RealNVP` for images, :class:`VectorRealNVP` for vectors."""
    try:
        if info.kind == "image":
            return RealNVP(
                info.shape, num_scales=cfg.num_scales, hidden_channels=cfg.hidden_channels,
                num_blocks=cfg.num_blocks, coupling=cfg.coupling, batch_norm=cfg.batch_norm,
                logit_alpha=cfg.logit_alpha, factor_out=cfg.factor_out,
            )
        return VectorRealNVP(
            info.dim, num_couplings=cfg.num_couplings, hidden=cfg.hidden, num_layers=cfg.num_layers,
            coupling=cfg.coupling, batch_norm=cfg.batch_norm, weight_norm=cfg.weight_norm,
        )
    except ValueError as e:
        raise ConfigError(f"cannot build the model for {info.name} {info.shape}: {e}") from e
