"""Reading new inputs to score them: image files, ``.npy`` arrays and CSV rows.

Images are read by the training reader's rule (:func:`realnvp.data.images.open_image`: 16-bit
greyscale scaled to 8 bits, opaque alpha dropped, transparent, 32-bit and float images refused,
images of more than 64 times the model's pixels refused before decoding), converted to the
run's channels (L or RGB), and must already have its size; 8-bit pixel values are mapped to the
run's K levels (``round(v·(K−1)/255)``), so a digits model (K = 17) can score ordinary greyscale
pictures. ``.npy`` image arrays must hold integers in ``[0, K−1]`` (what ``realnvp sample -o
FILE.npy`` writes); CSV files are read as ``train --data tabular`` reads them. Vector inputs are
in the data's original units and are standardised with the run's training statistics; a
conditional tabular run's rows may hold its context columns where the training file had them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import DataError, DataInfo
from .data.images import IMAGE_EXTENSIONS, open_image
from .data.tabular import read_csv
from .inputs import standardised_context


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


def _vectors(arr: np.ndarray, lines: np.ndarray | None, path: Path, info: DataInfo,
             context_columns: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    width = info.dim + len(context_columns)
    if arr.ndim != 2 or arr.shape[1] not in (info.dim, width):
        expected = f"rows of {info.dim} numbers" if width == info.dim else (
            f"rows of the training file's {width} columns, or of the {info.dim} modelled ones "
            "(with --context)")
        raise DataError(f"{path}: expected {expected}, got shape {arr.shape}")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):  # counted from 1, as the training reader counts
        r, col = bad[0]
        where = f"line {lines[r]}" if lines is not None else f"row {r + 1}"
        raise DataError(f"{path}: {where}, column {col + 1}: value {arr[r, col]} is not finite")
    context = None
    if arr.shape[1] != info.dim:  # the training file's layout: split the context columns off
        context = standardised_context(torch.from_numpy(arr[:, list(context_columns)]), info).float()
        arr = arr[:, [j for j in range(width) if j not in set(context_columns)]]
    if info.mean is not None:
        arr = (arr - np.asarray(info.mean)) / np.asarray(info.std)
    return torch.from_numpy(arr).float(), context


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


def read_inputs(paths: list[str], info: DataInfo, context_columns: Sequence[int] = ()
                ) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """``[(source, batch, context)]`` for every input path; a :class:`DataError` names any bad
    file. ``context_columns``: a conditional tabular run's (its configuration's); rows that hold
    them, in the training file's layout, come with their standardised ``(B, k)`` context, other
    inputs with ``None``."""
    out = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"input not found: {path}")
        suffix = path.suffix.lower()
        if info.kind == "image" and suffix in IMAGE_EXTENSIONS:
            out.append((name, _image_file(path, info), None))
        elif suffix in (".npy", ".csv", ".txt"):
            arr, lines = _array(path)
            batch, context = (_image_array(arr, path, info), None) if info.kind == "image" \
                else _vectors(arr, lines, path, info, context_columns)
            if batch.shape[0] == 0:
                raise DataError(f"{path}: no rows")
            out.append((name, batch, context))
        else:
            kinds = "image files, .npy" if info.kind == "image" else ".csv, .npy"
            raise DataError(f"{path}: unsupported input type {suffix or '(none)'}; expected {kinds}")
    return out
