"""The 8x8 handwritten digits bundled with scikit-learn (no download needed).

1797 images, 1 channel, 8x8, 17 grey levels (values 0..16), so ``num_levels = 17``.
Split: a fixed permutation from ``numpy.random.default_rng(0)``; 300 test and 1497 train images,
independent of the ``seed`` argument.
"""

from __future__ import annotations

import numpy as np

from .datasets import ArrayImageDataset
from .errors import DataError
from .info import DataInfo
from .pixels import as_uint8_pixels
from .splits import split_indices

NUM_LEVELS = 17
NUM_TEST = 300


def load_digits_split(split: str, augment: bool) -> tuple[ArrayImageDataset, DataInfo]:
    from sklearn.datasets import load_digits

    try:
        digits = load_digits()
        images, labels = digits.images, digits.target  # (1797, 8, 8) float64 holding 0..16
    except (OSError, ValueError) as exc:  # a broken scikit-learn install
        raise DataError(f"digits: scikit-learn could not load its bundled digits ({exc})") from exc
    if not np.array_equal(images, np.round(images)):
        raise DataError("digits: scikit-learn returned non-integer pixel values")
    pixels = as_uint8_pixels(images.astype(np.int64), "digits", NUM_LEVELS)[:, None, :, :]
    idx = split_indices(len(pixels), split, source="digits", num_test=NUM_TEST)
    info = DataInfo("digits", "image", (1, 8, 8), NUM_LEVELS, flip=False, num_classes=10)
    return ArrayImageDataset(pixels[idx], flip=augment, labels=labels[idx]), info
