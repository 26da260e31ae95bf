"""The toy densities' entropies (realnvp.data.toy.ENTROPY_NATS): analytic and Monte Carlo checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from realnvp.data.toy import ENTROPY_NATS, GENERATORS, sample_toy


def _fresh(name: str, n: int, seed: int = 12345) -> np.ndarray:
    return GENERATORS[name](n, np.random.default_rng(seed))


def _mc(neg_log_p: np.ndarray) -> tuple[float, float]:
    return float(neg_log_p.mean()), float(neg_log_p.std() / math.sqrt(len(neg_log_p)))


def test_every_generator_has_an_entropy():
    assert set(ENTROPY_NATS) == set(GENERATORS)
    assert all(0 < h < 5 for h in ENTROPY_NATS.values())


def test_checkerboard_entropy_is_ln_32():
    """Uniform on 8 cells of side 2 (the generator's coordinates are the model's): ln 32, and
    every sample lies in the 8 cells, which cover area 32."""
    assert ENTROPY_NATS["checkerboard"] == pytest.approx(math.log(32), abs=1e-5)
    x = _fresh("checkerboard", 100_000)
    cells = np.floor(x / 2)
    assert np.all(np.abs(x) < 4) and np.all(cells.sum(1) % 2 == 0)
    assert len(np.unique(cells, axis=0)) * 2 * 2 == 32


def test_eight_gaussians_entropy_by_monte_carlo():
    """−mean log p over fresh samples with the exact mixture density, within 4 standard errors;
    and below ln 8 + ln(2πeσ²) (the components overlap a little), by the amount computed."""
    s = 0.5 / 1.414
    a = np.arange(8) * np.pi / 4
    centres = 4 / 1.414 * np.stack([np.cos(a), np.sin(a)], 1)
    x = _fresh("8gaussians", 200_000)
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    log_p = np.log(np.exp(-d2 / (2 * s * s)).mean(1)) - math.log(2 * math.pi * s * s)
    mean, se = _mc(-log_p)
    assert abs(mean - ENTROPY_NATS["8gaussians"]) < 4 * se + 1e-4, (mean, se)
    separated = math.log(8) + math.log(2 * math.pi * math.e * s * s)
    assert separated - ENTROPY_NATS["8gaussians"] == pytest.approx(0.0063, abs=0.0005)


def test_moons_entropy_by_monte_carlo():
    """moons: p(x) = E_t N(x; c(t), 0.2² I) over the two half circles (t uniform on [0, π],
    midpoint rule); −mean log p over fresh samples within 4 standard errors."""
    m = 2000
    t = (np.arange(m) + 0.5) * np.pi / m
    c = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1),
                        np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)]) * 2 - np.array([1.0, 0.2])
    x = _fresh("moons", 20_000)
    out = np.empty(len(x))
    for i in range(0, len(x), 500):
        d2 = ((x[i:i + 500, None, :] - c[None]) ** 2).sum(-1)
        out[i:i + 500] = np.exp(-d2 / (2 * 0.04)).mean(1) / (2 * math.pi * 0.04)
    mean, se = _mc(-np.log(out))
    assert abs(mean - ENTROPY_NATS["moons"]) < 4 * se, (mean, se)


def test_test_split_is_what_the_entropies_describe():
    """The test split is the generator itself (the same function, the fixed test stream)."""
    x = sample_toy("checkerboard", 5000, 0, "test")
    assert x.dtype == np.float32 and np.all(np.abs(x) < 4)



def test_evaluation_reports_the_gap_to_the_entropy(capsys):
    import torch

    from realnvp.cli.common import print_eval
    from realnvp.data import DataInfo
    from realnvp.evaluate import summarize

    bpd = torch.tensor([1.0, 2.0, 3.0])
    toy = summarize(bpd, DataInfo("toy:moons", "vector", (2,), None))
    assert toy["entropy_nats"] == ENTROPY_NATS["moons"]
    assert toy["entropy_gap_nats"] == pytest.approx(toy["nll_nats"] - ENTROPY_NATS["moons"])
    assert toy["nll_nats"] == pytest.approx(2 * math.log(2) * 2.0)  # nats lead: D·ln2·bpd
    print_eval(toy, "toy:moons test")
    assert f"gap to the generator's entropy {ENTROPY_NATS['moons']:.4f} nats" in capsys.readouterr().out
    assert "entropy_nats" not in summarize(bpd, DataInfo("tabular", "vector", (2,), None))


def test_toy_train_size_sets_the_training_split_and_not_the_test_split():
    from realnvp.config import Config, ConfigError
    from realnvp.training.data import load_split

    cfg = Config(data="toy:rings", toy_train_size=1000)
    train, _ = load_split(cfg, "train")
    valid, _ = load_split(cfg, "valid")
    test, _ = load_split(cfg, "test")
    assert (len(train), len(valid), len(test)) == (900, 100, 5000)
    default_test, _ = load_split(Config(data="toy:rings"), "test")
    assert np.array_equal(np.stack([test[i] for i in range(5)]),
                          np.stack([default_test[i] for i in range(5)]))
    with pytest.raises(ConfigError, match="toy_train_size"):
        Config().replace(toy_train_size=0)
