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
