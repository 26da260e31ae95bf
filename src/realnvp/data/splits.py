"""Fixed train/test splits for data sets that do not ship one."""

from __future__ import annotations

import numpy as np

from .errors import DataError

SPLITS = ("train", "test")

# The split seed is a constant, deliberately independent of ``load_dataset(seed=...)``: runs with
# different seeds must still evaluate on the same held-out examples.
SPLIT_SEED = 0
TEST_FRACTION = 0.1


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def split_indices(
    n: int,
    split: str,
    *,
    source: str,
    num_test: int | None = None,
    test_fraction: float = TEST_FRACTION,
) -> np.ndarray:
    """Indices (sorted, int64) of ``split`` among ``n`` examples.

    A permutation from ``numpy.random.default_rng(SPLIT_SEED)`` is cut into ``num_test`` test
    examples (default: ``round(n * test_fraction)``, at least 1) and the rest for training. The
    result depends only on ``n``, so adding files to a folder changes the split.
    """
    check_split(split)
    if n < 2:
        raise DataError(
            f"{source}: found {n} example(s); need at least 2 to make a train/test split"
        )
    if num_test is None:
        num_test = max(1, int(round(n * test_fraction)))
    num_test = min(num_test, n - 1)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    chosen = perm[:num_test] if split == "test" else perm[num_test:]
    return np.sort(chosen)
