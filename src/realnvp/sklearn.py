"""A scikit-learn-style density estimator: ``FlowDensity().fit(X).score_samples(X)``.

For tabular anomaly detection: rows of ``X`` are standardised with the training statistics, a
:class:`~realnvp.models.VectorRealNVP` is fitted by maximum likelihood through the package's
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
from .models.build import build_model

#: The flow families the estimator can fit (more as the package grows them).
FAMILIES = ("realnvp",)


class FlowDensity(DensityMixin, BaseEstimator):
    """Normalizing-flow density of the rows of ``X`` ``(n_samples, n_features)``, n_features ≥ 2.

    Parameters are the package's configuration keys of the same names (``realnvp train
    --list-keys``); ``valid_size`` carves the validation split that selects the epoch.
    """

    def __init__(self, family: str = "realnvp", num_couplings: int = 8, hidden: int = 128,
                 num_layers: int = 2, batch_norm: bool = False, weight_norm: bool = False,
                 epochs: int = 50, batch_size: int = 256, lr: float = 1e-3, valid_size: float = 0.1,
                 random_state: int = 0, device: str = "cpu"):
        self.family, self.num_couplings, self.hidden = family, num_couplings, hidden
        self.num_layers, self.batch_norm, self.weight_norm = num_layers, batch_norm, weight_norm
        self.epochs, self.batch_size, self.lr, self.valid_size = epochs, batch_size, lr, valid_size
        self.random_state, self.device = random_state, device

    def _config(self, n: int) -> Config:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        n_valid = max(1, round(n * self.valid_size)) if self.valid_size else 0
        return Config(data="tabular", coupling="affine").replace(
            num_couplings=self.num_couplings, hidden=self.hidden, num_layers=self.num_layers,
            batch_norm=self.batch_norm, weight_norm=self.weight_norm, epochs=self.epochs,
            batch_size=max(1, min(self.batch_size, n - n_valid)), lr=self.lr,
            valid_size=float(n_valid), seed=int(self.random_state), device=self.device,
            sample_every=0, eval_dequant_samples=1)

    def fit(self, X, y=None) -> FlowDensity:
        """Fit the flow to the rows of ``X``; ``y`` is ignored."""
        from .training import TrainingData, train
        from .training.data import carve

        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=3)
        if X.shape[1] < 2:
            raise ValueError("FlowDensity needs at least 2 features (coupling layers split the "
                             f"features in two); got n_features = {X.shape[1]}")
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        cfg = self._config(len(X))
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


__all__ = ["FAMILIES", "FlowDensity"]
