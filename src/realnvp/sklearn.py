"""A scikit-learn-style density estimator: ``FlowDensity().fit(X).score_samples(X)``.

For tabular anomaly detection: rows of ``X`` are standardised with the training statistics, a
vector flow of any of the package's families (``model``: :data:`FAMILIES`, the vector models of
``realnvp train``) is fitted by maximum likelihood through the package's
:class:`~realnvp.training.Trainer` (validation split, best checkpoint, clipping, the L2 term),
and :meth:`FlowDensity.score_samples` returns the log-density per row **in the input's units**
(the standardisation's ``−Σ log σ`` included). :meth:`save` / :meth:`load` keep the fitted
model in a safetensors file (nothing is unpickled).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import checkpoint
from .config import Config
from .data import DataInfo
from .data.datasets import VectorDataset
from .models.build import VECTOR_MODELS, build_model

#: The flow families the estimator can fit: every vector model of the package.
FAMILIES = VECTOR_MODELS
#: The families whose coupling layers split the features in two (they need 2 or more).
COUPLING_FAMILIES = ("realnvp", "nsf-coupling")


class FlowDensity(DensityMixin, BaseEstimator):
    """Normalizing-flow density of the rows of ``X`` ``(n_samples, n_features)``.

    ``model`` picks the family: ``realnvp`` (affine couplings), ``maf``, ``iaf``,
    ``nsf-coupling``, ``nsf-autoregressive`` (rational-quadratic splines) or ``ffjord`` (a
    continuous-time flow); the coupling families need n_features ≥ 2. The other parameters are
    the package's configuration keys of the same names (``realnvp train --list-keys``), each used
    by the families it applies to: ``num_couplings`` (layers of every family but ffjord),
    ``hidden``, ``num_layers`` (all), ``batch_norm`` (all but ffjord), ``weight_norm`` (realnvp,
    nsf-coupling), ``bins``, ``spline_bound`` (the nsf families), ``num_blocks``, ``ode_solver``,
    ``ode_rtol``, ``ode_atol`` (ffjord). ``valid_size`` carves the validation split that selects
    the epoch. ffjord's adaptive solver steps through the rows of one call together, so a row's
    score can move by round-off (about 1e-5 nats) with the rows scored beside it.
    """

    def __init__(self, model: str = "realnvp", num_couplings: int = 8, hidden: int = 128,
                 num_layers: int = 2, batch_norm: bool = False, weight_norm: bool = False,
                 bins: int = 8, spline_bound: float = 5.0, num_blocks: int = 1,
                 ode_solver: str = "dopri5", ode_rtol: float = 1e-5, ode_atol: float = 1e-5,
                 epochs: int = 50, batch_size: int = 256, lr: float = 1e-3, valid_size: float = 0.1,
                 random_state: int = 0, device: str = "cpu"):
        self.model, self.num_couplings, self.hidden = model, num_couplings, hidden
        self.num_layers, self.batch_norm, self.weight_norm = num_layers, batch_norm, weight_norm
        self.bins, self.spline_bound, self.num_blocks = bins, spline_bound, num_blocks
        self.ode_solver, self.ode_rtol, self.ode_atol = ode_solver, ode_rtol, ode_atol
        self.epochs, self.batch_size, self.lr, self.valid_size = epochs, batch_size, lr, valid_size
        self.random_state, self.device = random_state, device

    def _config(self, n: int) -> Config:
        if self.model not in FAMILIES:
            raise ValueError(f"model must be one of {', '.join(FAMILIES)}, got {self.model!r}")
        n_valid = max(1, round(n * self.valid_size)) if self.valid_size else 0
        return Config(data="tabular", coupling="affine").replace(
            model=self.model, num_couplings=self.num_couplings, hidden=self.hidden,
            num_layers=self.num_layers, batch_norm=self.batch_norm, weight_norm=self.weight_norm,
            bins=self.bins, spline_bound=float(self.spline_bound), num_blocks=self.num_blocks,
            ode_solver=self.ode_solver, ode_rtol=float(self.ode_rtol), ode_atol=float(self.ode_atol),
            epochs=self.epochs, batch_size=max(1, min(self.batch_size, n - n_valid)), lr=self.lr,
            valid_size=float(n_valid), seed=int(self.random_state), device=self.device,
            sample_every=0, eval_dequant_samples=1)

    def fit(self, X, y=None) -> FlowDensity:
        """Fit the flow to the rows of ``X``; ``y`` is ignored."""
        from .training import TrainingData, train
        from .training.data import carve

        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=3)
        cfg = self._config(len(X))
        if X.shape[1] < 2 and self.model in COUPLING_FAMILIES:
            raise ValueError(f"FlowDensity(model={self.model!r}) needs at least 2 features (its "
                             f"coupling layers split the features in two); got n_features = "
                             f"{X.shape[1]}")
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        info = DataInfo("tabular", "vector", (X.shape[1],), None, mean=tuple(mean), std=tuple(std))
        whole = VectorDataset((X - mean) / std)
        rest, valid = carve(whole, cfg.valid_size)
        data = TrainingData(info, rest, test=valid, valid=valid)
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp) / "run", quiet=True, log=lambda *a: None, data=data)
            tensors, _ = checkpoint.load(Path(tmp) / "run" / "checkpoints" / "best.safetensors")
        self.model_ = build_model(cfg, info)
        self.model_.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.model_.eval()
        self.mean_, self.scale_, self.config_ = mean, std, cfg
        return self

    def score_samples(self, X) -> np.ndarray:
        """``log p(x)`` per row, in nats, in the input's units: ``(n_samples,)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        with torch.no_grad():
            log_p = self.model_.log_prob(z).double().numpy()
        return log_p - float(np.log(self.scale_).sum())

    def score(self, X, y=None) -> float:
        """Mean log-density of the rows of ``X`` (nats)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> np.ndarray:
        """``(n_samples, n_features)`` rows drawn from the fitted density, in the input's units."""
        check_is_fitted(self)
        g = torch.Generator().manual_seed(self.random_state if random_state is None else random_state)
        x = self.model_.sample(n_samples, generator=g).double().numpy()
        return x * self.scale_ + self.mean_

    def save(self, path: str | Path) -> None:
        """The fitted estimator as one safetensors file (weights; parameters and statistics in
        its JSON metadata)."""
        check_is_fitted(self)
        meta = {"params": self.get_params(), "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "config": self.config_.to_dict()}
        checkpoint.save(path, self.model_.state_dict(), json.loads(json.dumps(meta)),
                        keep_previous=False)

    @classmethod
    def load(cls, path: str | Path) -> FlowDensity:
        tensors, meta = checkpoint.load(path)
        est = cls(**meta["params"])
        est.mean_, est.scale_ = np.asarray(meta["mean"]), np.asarray(meta["scale"])
        est.config_ = Config.from_dict(meta["config"])
        d = len(est.mean_)
        info = DataInfo("tabular", "vector", (d,), None, mean=tuple(est.mean_), std=tuple(est.scale_))
        est.model_ = build_model(est.config_, info)
        est.model_.load_state_dict(tensors)
        est.model_.eval()
        est.n_features_in_ = d
        return est


__all__ = ["COUPLING_FAMILIES", "FAMILIES", "FlowDensity"]
