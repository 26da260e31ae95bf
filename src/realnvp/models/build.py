"""The flow a run's configuration describes, for data shaped like the data set's."""

from __future__ import annotations

from ..config import Config, ConfigError
from ..data import DataInfo
from ..data.registry import no_labels
from .autoregressive import IAF, MAF, NSFAutoregressive, NSFCoupling
from .dequantization import VariationalDequantizer
from .ffjord import FFJORD, FFJORDImage
from .flow import Flow
from .glow import Glow
from .image import RealNVP
from .vector import VectorRealNVP

#: the models for each kind of data
IMAGE_MODELS = ("realnvp", "glow", "ffjord")
VECTOR_MODELS = ("realnvp", "maf", "iaf", "nsf-coupling", "nsf-autoregressive", "ffjord")
_AUTOREGRESSIVE = {"maf": MAF, "iaf": IAF, "nsf-autoregressive": NSFAutoregressive}


def _ode_options(cfg: Config) -> dict:
    """The CNF options of the ffjord models."""
    t1 = {"t1": cfg.ode_t1} if cfg.ode_t1 else {}  # 0: the model's default
    return dict(**t1, train_t1=cfg.ode_train_t1, solver=cfg.ode_solver, rtol=cfg.ode_rtol,
                atol=cfg.ode_atol, adjoint=cfg.ode_adjoint,
                test_rtol=cfg.ode_test_rtol or None, test_atol=cfg.ode_test_atol or None,
                test_solver=cfg.ode_test_solver or None, step_size=cfg.ode_step_size,
                kinetic_energy=cfg.kinetic_energy, jacobian_norm=cfg.jacobian_norm, max_nfe=cfg.max_nfe)


def _image_model(cfg: Config, info: DataInfo) -> Flow:
    if cfg.model == "ffjord":
        trace = "hutchinson" if cfg.trace_estimator == "auto" else cfg.trace_estimator
        return FFJORDImage(info.shape, num_scales=cfg.num_scales, num_blocks=cfg.num_blocks,
                           hidden_channels=cfg.hidden_channels, num_hidden_layers=cfg.num_layers,
                           logit_alpha=cfg.logit_alpha, trace=trace,
                           context_features=info.num_classes if cfg.conditional else 0,
                           **_ode_options(cfg))
    if cfg.model == "glow":
        return Glow(info.shape, num_levels=cfg.num_scales, steps_per_level=cfg.steps_per_level,
                    hidden_channels=cfg.hidden_channels, coupling=cfg.coupling,
                    context_features=info.num_classes if cfg.conditional else 0, dropout=cfg.dropout)
    return RealNVP(
        info.shape, num_scales=cfg.num_scales, hidden_channels=cfg.hidden_channels,
        num_blocks=cfg.num_blocks, coupling=cfg.coupling, batch_norm=cfg.batch_norm,
        logit_alpha=cfg.logit_alpha, factor_out=cfg.factor_out,
        context_features=info.num_classes if cfg.conditional else 0, dropout=cfg.dropout,
    )


def _vector_model(cfg: Config, info: DataInfo) -> Flow:
    k = info.context_features
    if cfg.model == "ffjord":
        return FFJORD(info.dim, hidden=cfg.hidden, num_hidden_layers=cfg.num_layers,
                      num_blocks=cfg.num_blocks, trace=cfg.trace_estimator, context_features=k,
                      **_ode_options(cfg))
    if cfg.model == "realnvp":
        return VectorRealNVP(
            info.dim, num_couplings=cfg.num_couplings, hidden=cfg.hidden, num_layers=cfg.num_layers,
            coupling=cfg.coupling, batch_norm=cfg.batch_norm, weight_norm=cfg.weight_norm,
            context_features=k,
        )
    if cfg.model == "nsf-coupling":
        return NSFCoupling(info.dim, num_layers=cfg.num_couplings, hidden=cfg.hidden,
                           num_hidden_layers=cfg.num_layers, bins=cfg.bins, bound=cfg.spline_bound,
                           batch_norm=cfg.batch_norm, weight_norm=cfg.weight_norm, context_features=k,
                           linear=None if cfg.linear == "none" else cfg.linear)
    kwargs = dict(num_layers=cfg.num_couplings, hidden=cfg.hidden, num_hidden_layers=cfg.num_layers,
                  bins=cfg.bins, bound=cfg.spline_bound, batch_norm=cfg.batch_norm, context_features=k,
                  mog_components=cfg.mog_components)
    return _AUTOREGRESSIVE[cfg.model](info.dim, **kwargs)


def build_model(cfg: Config, info: DataInfo) -> Flow:
    """``cfg.model`` for the data set's shape: for images the multi-scale :class:`RealNVP` or
    :class:`Glow`; for vectors :class:`VectorRealNVP`, :class:`MAF`, :class:`IAF`,
    :class:`NSFCoupling` or :class:`NSFAutoregressive`; :class:`FFJORD` / :class:`FFJORDImage` for
    ``ffjord``."""
    allowed = IMAGE_MODELS if info.kind == "image" else VECTOR_MODELS
    if cfg.model not in allowed:
        raise ConfigError(f"model {cfg.model} is not available for {info.kind} data ({info.name}); "
                          f"choose one of {', '.join(allowed)}")
    if cfg.conditional and (info.kind != "image" or cfg.model not in IMAGE_MODELS):
        raise ConfigError(f"conditional: class-conditional training is available for the image "
                          f"models on labelled data, not for {cfg.model} on {info.name}")
    if cfg.mog_components and cfg.model not in _AUTOREGRESSIVE:
        raise ConfigError(f"mog_components: a MADE MoG base is for model maf or nsf-autoregressive, "
                          f"not {cfg.model}")
    if cfg.conditional and not info.num_classes:
        raise ConfigError(no_labels(info.name))
    try:
        return (_image_model if info.kind == "image" else _vector_model)(cfg, info)
    except ValueError as e:
        raise ConfigError(f"cannot build the {cfg.model} model for {info.name} {info.shape}: {e}") from e


def build_dequantizer(cfg: Config, info: DataInfo) -> VariationalDequantizer | None:
    """The learned dequantizer ``q(u|x)`` of ``dequantization = variational`` runs, for the data
    set's images; ``None`` for uniform dequantization (the noise needs no module)."""
    if cfg.dequantization == "uniform":
        return None
    if info.kind != "image":
        raise ConfigError(f"dequantization: variational dequantization is for discrete (image) "
                          f"data; {info.name} is continuous")
    return VariationalDequantizer(info.shape, info.num_levels, num_steps=cfg.dequant_steps,
                                  hidden_channels=cfg.dequant_hidden)
