"""Reading new inputs to score them: image files, ``.npy`` arrays and CSV rows.

Images are read by the training reader's rule (:func:`realnvp.data.images.open_image`: 16-bit
greyscale scaled to 8 bits, opaque alpha dropped, transparent, 32-bit and float images refused,
images of more than 64 times the model's pixels refused before decoding), converted to the
run's channels (L or RGB), and must already have its size; 8-bit pixel values are mapped to the
run's K levels (``round(v·(K−1)/255)``), so a digits model (K = 17) can score ordinary greyscale
pictures. ``.npy`` image arrays must hold integers in ``[0, K−1]`` (what ``realnvp sample -o
FILE.npy`` writes); CSV files are read as ``train --data tabular`` reads them. Vector inputs are
in the data's original units and are standardised with the run's training statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import DataError, DataInfo
from .data.images import IMAGE_EXTENSIONS, open_image
from .data.tabular import read_csv


def _image_file(path: Path, info: DataInfo) -> torch.Tensor:
    c, h, w = info.shape
    img = open_image(path, "L" if c == 1 else "RGB", max_pixels=64 * h * w)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape[:2] != (h, w):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the model expects {w}x{h}")
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    k = info.num_levels
    levels = np.rint(arr.astype(np.float64) * (k - 1) / 255) if k != 256 else arr
    return torch.from_numpy(np.ascontiguousarray(levels)).to(torch.uint8)[None]


def _array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The numbers of a ``.npy`` file, or of a CSV file read as ``train --data tabular`` reads it
    (a header line allowed), with the 1-based line of each CSV row."""
    if path.suffix.lower() != ".npy":
        return read_csv(path)
    try:
        return np.load(path, allow_pickle=False), None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read numbers ({e})") from e


def _vectors(arr: np.ndarray, lines: np.ndarray | None, path: Path, info: DataInfo) -> torch.Tensor:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != info.dim:
        raise DataError(f"{path}: expected rows of {info.dim} numbers, got shape {arr.shape}")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):  # counted from 1, as the training reader counts
        r, col = bad[0]
        where = f"line {lines[r]}" if lines is not None else f"row {r + 1}"
        raise DataError(f"{path}: {where}, column {col + 1}: value {arr[r, col]} is not finite")
    if info.mean is not None:
        arr = (arr - np.asarray(info.mean)) / np.asarray(info.std)
    return torch.from_numpy(arr).float()


def _image_array(arr: np.ndarray, path: Path, info: DataInfo) -> torch.Tensor:
    if arr.ndim == len(info.shape):
        arr = arr[None]
    if arr.size == 0:
        raise DataError(f"{path}: no images (an empty array)")
    if tuple(arr.shape[1:]) != tuple(info.shape):
        raise DataError(f"{path}: expected images of shape {tuple(info.shape)}, got {arr.shape[1:]}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise DataError(f"{path}: pixel values must be integers in [0, {info.num_levels - 1}]")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > info.num_levels - 1:
        raise DataError(f"{path}: pixel values must lie in [0, {info.num_levels - 1}], got [{lo}, {hi}]")
    return torch.from_numpy(arr.astype(np.uint8))


def read_inputs(paths: list[str], info: DataInfo) -> list[tuple[str, torch.Tensor]]:
    """``[(source, batch)]`` for every input path; a :class:`DataError` names any bad file."""
    out = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"input not found: {path}")
        suffix = path.suffix.lower()
        if info.kind == "image" and suffix in IMAGE_EXTENSIONS:
            out.append((name, _image_file(path, info)))
        elif suffix in (".npy", ".csv", ".txt"):
            arr, lines = _array(path)
            batch = _image_array(arr, path, info) if info.kind == "image" \
                else _vectors(arr, lines, path, info)
            if batch.shape[0] == 0:
                raise DataError(f"{path}: no rows")
            out.append((name, batch))
        else:
            kinds = "image files, .npy" if info.kind == "image" else ".csv, .npy"
            raise DataError(f"{path}: unsupported input type {suffix or '(none)'}; expected {kinds}")
    return out
