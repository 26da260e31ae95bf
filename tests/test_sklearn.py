"""The scikit-learn estimator: the estimator checks, densities in the input's units, saving.

Standardisation is part of the estimator, so the density it reports is of the rows as given:
fitting ``10·X`` instead of ``X`` (the same standardised data, the same seed) must shift every
log-density by exactly ``−D ln 10``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.utils.estimator_checks import check_estimator

from realnvp.sklearn import FlowDensity

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


def test_one_feature_and_unknown_families_are_refused_in_words(gaussian):
    with pytest.raises(ValueError, match="at least 2 features"):
        FlowDensity(**SMALL).fit(gaussian[:, :1])
    with pytest.raises(ValueError, match="family must be one of"):
        FlowDensity(family="maf").fit(gaussian)
