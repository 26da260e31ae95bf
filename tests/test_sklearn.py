"""The scikit-learn estimator: the estimator checks, densities in the input's units, saving.

Standardisation is part of the estimator, so the density it reports is of the rows as given:
fitting ``10·X`` instead of ``X`` (the same standardised data, the same seed) must shift every
log-density by exactly ``−D ln 10``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import check_estimator

from realnvp.sklearn import FAMILIES, FlowDensity

SMALL = dict(epochs=3, hidden=16, num_couplings=2)


def test_scikit_learns_estimator_checks_pass():
    results = check_estimator(FlowDensity(**SMALL), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) >= 35


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]


def test_log_densities_are_in_the_inputs_units(gaussian):
    a = FlowDensity(**SMALL).fit(gaussian)
    b = FlowDensity(**SMALL).fit(10 * gaussian)
    np.testing.assert_allclose(b.score_samples(10 * gaussian),
                               a.score_samples(gaussian) - 3 * math.log(10), rtol=0, atol=1e-5)


def test_a_fitted_gaussian_scores_near_its_true_density(gaussian):
    est = FlowDensity(epochs=20).fit(gaussian)
    var = np.array([1.0, 100.0, 0.01])
    true = -0.5 * (((gaussian - [0.0, 5.0, -1.0]) ** 2 / var).sum(1) + np.log(2 * np.pi * var).sum())
    assert abs(est.score(gaussian) - true.mean()) < 0.1
    assert est.sample(5).shape == (5, 3)


def test_save_and_load_give_the_same_densities(tmp_path, gaussian):
    est = FlowDensity(**SMALL).fit(gaussian)
    est.save(tmp_path / "flow.safetensors")
    back = FlowDensity.load(tmp_path / "flow.safetensors")
    np.testing.assert_array_equal(back.score_samples(gaussian), est.score_samples(gaussian))
    assert back.get_params() == est.get_params()


def test_one_feature_for_a_coupling_family_and_unknown_families_are_refused_in_words(gaussian):
    with pytest.raises(ValueError, match="at least 2 features"):
        FlowDensity(**SMALL).fit(gaussian[:, :1])
    with pytest.raises(ValueError, match="at least 2 features"):
        FlowDensity(model="nsf-coupling", **SMALL).fit(gaussian[:, :1])
    with pytest.raises(ValueError, match="model must be one of realnvp, maf, iaf"):
        FlowDensity(model="glow").fit(gaussian)
    one = FlowDensity(model="maf", **SMALL).fit(gaussian[:, :1])
    assert one.score_samples(gaussian[:5, :1]).shape == (5,)


#: each family tiny: 2 layers of 8 units, 2 epochs; ffjord at loose solver tolerances
TINY_FAMILY = dict(epochs=2, hidden=8, num_couplings=2, num_layers=1, ode_rtol=1e-3, ode_atol=1e-3)


@pytest.mark.parametrize("model", FAMILIES)
def test_every_family_fits_and_scores_in_the_inputs_units(tmp_path, model):
    """A near-identity flow on standardised Gaussian rows is close to the true Gaussian, so the
    mean score must be near the true mean log-density in the input's units (the scales' product
    is 30: standardised units would be off by ln 30 ≈ 3.4 nats)."""
    rng = np.random.default_rng(1)
    scale, shift = np.array([1.0, 10.0, 3.0]), np.array([0.0, 5.0, -1.0])
    X = rng.normal(size=(300, 3)) * scale + shift
    est = FlowDensity(model=model, **TINY_FAMILY).fit(X)
    scores = est.score_samples(X)
    assert scores.shape == (300,) and np.isfinite(scores).all()
    z = torch.from_numpy((X - est.mean_) / est.scale_).float()
    with torch.no_grad():
        log_p = est.model_.log_prob(z).double().numpy()
    np.testing.assert_allclose(scores, log_p - np.log(est.scale_).sum(), rtol=0, atol=1e-9)
    true = -0.5 * (((X - shift) / scale) ** 2 + np.log(2 * np.pi * scale ** 2)).sum(1)
    assert abs(scores.mean() - true.mean()) < 0.3, (scores.mean(), true.mean())
    assert est.sample(4).shape == (4, 3) and np.isfinite(est.sample(4)).all()
    est.save(tmp_path / "flow.safetensors")
    back = FlowDensity.load(tmp_path / "flow.safetensors")
    assert type(back.model_) is type(est.model_) and back.get_params() == est.get_params()
    # the whole batch again: ffjord's adaptive solver steps through a batch together
    np.testing.assert_array_equal(back.score_samples(X), scores)
