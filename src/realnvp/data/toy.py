"""2-D toy densities (the generators popularised by FFJORD and used across flow papers).

Every generator maps ``(n, numpy Generator)`` to a float64 ``(n, 2)`` array in shuffled order:

- ``moons``: sklearn two moons, noise 0.1, then x*2 + (-1, -0.2).
- ``8gaussians``: centres on a circle of radius 4 at multiples of 45 deg, sigma 0.5, all / 1.414.
- ``checkerboard``: uniform on the 8 cells (i+j even, cells of side 2) of a 4x4 board on [-4,4)^2.
- ``rings``: 4 concentric circles of radii 3, 2.25, 1.5, 0.75 (equal shares), Gaussian noise 0.08.
- ``circles``: sklearn circles, factor 0.5, noise 0.08, then x*3 (radii 3 and 1.5).
- ``pinwheel``: 5 arms, radial sigma 0.3, tangential sigma 0.1, rate 0.25, then x*2.
- ``2spirals``: two interleaved spirals of 540 degrees, scaled by 1/3, noise 0.1.
- ``swissroll``: sklearn swiss roll, noise 1.0, columns 0 and 2, / 5.

Data sets are generated once and held in memory; default sizes 20000 (train) / 5000 (test).
The train set comes from ``SeedSequence([TRAIN_TAG, seed])`` and the test set from the fixed
``SeedSequence([TEST_TAG])``, so the test set is the same for every ``seed`` and never shares a
stream with any train set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.datasets import make_circles, make_moons, make_swiss_roll

from .datasets import VectorDataset
from .errors import DataError
from .info import DataInfo

DEFAULT_SIZES = {"train": 20000, "test": 5000}
TRAIN_TAG, TEST_TAG = 0x7261696E, 0x74657374  # 'rain', 'test'


def _sk_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    x = make_moons(n_samples=n, noise=0.1, random_state=_sk_seed(rng))[0]
    return x * 2 + np.array([-1.0, -0.2])


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4)
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = centres[rng.integers(8, size=n)] + 0.5 * rng.standard_normal((n, 2))
    return x / 1.414


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def rings(n: int, rng: np.random.Generator) -> np.ndarray:
    radii = np.array([3.0, 2.25, 1.5, 0.75])
    which = np.arange(n) % 4
    # Evenly spaced angles per ring, as in the usual generator, then noise.
    angles = np.empty(n)
    for k in range(4):
        m = int(np.sum(which == k))
        angles[which == k] = np.linspace(0, 2 * np.pi, m, endpoint=False)
    x = radii[which, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = x[rng.permutation(n)]
    return x + 0.08 * rng.standard_normal((n, 2))


def circles(n: int, rng: np.random.Generator) -> np.ndarray:
    return make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=_sk_seed(rng))[0] * 3


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    arms = np.arange(n) % num_arms
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = arms * (2 * np.pi / num_arms) + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    x = np.einsum("ti,tij->tj", features, rotations)
    return 2 * x[rng.permutation(n)]


def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    half = n - n // 2
    t = np.sqrt(rng.random((half, 1))) * 540 * (2 * np.pi) / 360
    dx = -np.cos(t) * t + rng.random((half, 1)) * 0.5
    dy = np.sin(t) * t + rng.random((half, 1)) * 0.5
    arm = np.hstack([dx, dy])
    x = np.vstack([arm, -arm])[:n] / 3
    x = x + 0.1 * rng.standard_normal(x.shape)
    return x[rng.permutation(n)]


def swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    x = make_swiss_roll(n_samples=n, noise=1.0, random_state=_sk_seed(rng))[0]
    return x[:, [0, 2]] / 5.0


GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rings": rings,
    "circles": circles,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
    "swissroll": swissroll,
}


#: Differential entropy ``−E[log p(x)]`` in nats of each generator's density, in the coordinates
#: the model sees (this module does not standardise: they are the generators' own).
ENTROPY_NATS: dict[str, float] = {
    "moons": 2.39388,
    "8gaussians": 2.83188,
    "checkerboard": 3.46574,  # ln 32
    "rings": 2.62318,
    "circles": 3.26814,
    "pinwheel": 2.31779,
    "2spirals": 2.64545,
    "swissroll": 2.66965,
}
"""How each entropy was computed (``python benchmarks/toy_floor.py --entropies`` recomputes them).

- ``checkerboard``: analytic. Uniform on 8 cells of side 2 (area 32): ``ln 32``.
- The others: grid quadrature of ``−∫ p log p`` with ``p`` the generator's exact density, on a
  square grid of spacing 0.01 (0.005 as the check) covering the support with at least 8 noise
  deviations to spare; the mass on the grid is 1 to 1e-6 and the two spacings agree to 1e-5.
  The generators' curves (moons, rings, circles, swissroll, 2spirals) are taken in their
  continuum limit (angles / curve parameters uniform, as the evenly spaced ``linspace`` points
  of 10000 per curve approximate to far below 1e-5), with the curve parameter integrated by the
  midpoint rule over 8000-40000 nodes (twice as many as the check):

  - ``8gaussians``: the 8-component mixture itself. The components overlap slightly (centres
    6.1 sigma apart), so the entropy is 0.0063 below ``ln 8 + ln(2 pi e sigma^2)`` = 2.83818.
  - ``moons``, ``rings``, ``circles``, ``swissroll``: ``p(x) = E_t N(x; c(t), sigma^2 I)`` with
    the curve ``c`` and noise sigma of the generator (0.2, 0.08, 0.24, 0.2 after its scaling).
  - ``2spirals``: ``t = 3 pi sqrt(U)``; per coordinate the noise is U[0, 1/6] (negated on the
    second arm) convolved with N(0, 0.1^2), so ``p`` is a curve mixture of such kernels.
  - ``pinwheel``: no additive noise; in polar coordinates the map from the Gaussian features
    ``f`` to ``x`` keeps the radius and moves the angle by ``u(psi) = psi − 0.25 exp(f0)``, so
    ``p(x) = (1/5) sum_arms sum_roots p_f / |u'|`` (every root: the arms overlap near the centre),
    integrated on a polar grid (d rho 0.002, 10240 angles; the check halves both). The overlap
    puts it 0.0064 below the injective figure ``ln 5 + H(f) + E log|u'| + 2 ln 2`` = 2.3242;
    a Monte Carlo estimate with the exact density (roots found per sample) agrees.

Monte Carlo checks with the exact log-density (``--entropies --mc N``) agree with every figure
within their standard errors (tests/test_toy.py checks checkerboard, 8gaussians and moons).
"""


def toy_entropy(data: str) -> float | None:
    """The entropy in nats (:data:`ENTROPY_NATS`) of data set ``toy:NAME``; ``None`` for any other."""
    prefix, _, name = data.partition(":")
    return ENTROPY_NATS.get(name) if prefix == "toy" else None


def sample_toy(name: str, n: int, seed: int, split: str) -> np.ndarray:
    """``n`` float32 samples ``(n, 2)`` of toy density ``name`` for ``split``."""
    entropy = [TRAIN_TAG, seed] if split == "train" else [TEST_TAG]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    return GENERATORS[name](n, rng).astype(np.float32)


def load_toy(
    name: str, split: str, seed: int, num_samples: int | None = None
) -> tuple[VectorDataset, DataInfo]:
    n = DEFAULT_SIZES[split] if num_samples is None else num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"toy:{name}: num_samples must be a positive integer, got {n!r}")
    if seed < 0:
        raise DataError(f"toy:{name}: seed must be non-negative, got {seed}")
    info = DataInfo(f"toy:{name}", "vector", (2,), None, flip=False)
    return VectorDataset(sample_toy(name, n, seed, split)), info
