"""Validation of decoded pixel arrays: dtype, range and shape, with one-line errors."""

from __future__ import annotations

import numpy as np

from .errors import DataError


def as_uint8_pixels(array: np.ndarray, source: str, num_levels: int = 256) -> np.ndarray:
    """Return ``array`` as uint8 after checking every value lies in ``[0, num_levels - 1]``.

    Integer arrays of any width are accepted if in range; floats and booleans are refused rather
    than rounded, and out-of-range values are refused rather than clipped.
    """
    if array.dtype == np.uint8 and num_levels >= 256:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{source}: pixel array has dtype {array.dtype}; expected integers in "
            f"[0, {num_levels - 1}] (uint8)"
        )
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > num_levels - 1:
            raise DataError(
                f"{source}: pixel values span [{lo}, {hi}]; expected values in "
                f"[0, {num_levels - 1}]"
            )
    return array.astype(np.uint8, copy=False)


def check_image_shape(
    shape: tuple[int, ...], expected: tuple[int, ...], source: str, what: str = "images"
) -> None:
    """Compare the per-item shape of an array with the declared one."""
    if tuple(shape) != tuple(expected):
        raise DataError(f"{source}: {what} have shape {tuple(shape)}; expected {tuple(expected)}")
