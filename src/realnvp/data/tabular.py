"""Tabular data: a numeric CSV file or a 2-D ``.npy`` matrix, standardised per column.

``data_dir`` is the file itself or a directory holding exactly one ``.csv``/``.npy`` file.

CSV: delimiter ``,`` (or ``;``/tab if the first line has more of those, or whitespace if it has
none); blank lines and lines starting with ``#`` are skipped; the first line is taken as a header
when any of its fields is not a number. Every other cell must parse as a float.

Split: a fixed seeded 10% test split of the rows. Each column is standardised with the mean and
standard deviation (ddof=0) of the TRAIN rows, for both splits; the statistics are in
``DataInfo.mean``/``std``. NaN/inf cells and columns that are constant on the train rows raise
:class:`DataError` (rather than clamping the std), since a constant column has no density.
Items: ``torch.float32`` ``(D,)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import VectorDataset
from .errors import DataError
from .info import DataInfo
from .paths import missing_message
from .splits import split_indices

SUFFIXES = (".csv", ".npy")
# A column whose train std is below this (relative to its scale) cannot be standardised.
MIN_REL_STD = 1e-12


def find_file(path: Path) -> Path:
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: expected a .csv or .npy file")
        return path
    if not path.is_dir():
        raise DataError(missing_message("tabular", path, ["*.csv", "*.npy"], can_download=False))
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise DataError(
            f"tabular: {path} must hold exactly one .csv or .npy file (found {listing}); "
            f"or pass the file itself as data_dir"
        )
    return found[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _delimiter(line: str) -> str | None:
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a numeric CSV into a float64 ``(N, D)`` matrix and the 1-based line of each row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV file ({exc})") from exc
    lines = [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise DataError(f"{path}: the file holds no data rows")
    delim = _delimiter(lines[0][1])

    def fields(line: str) -> list[str]:
        return [f.strip() for f in (line.split(delim) if delim else line.split())]

    if not all(_is_number(f) for f in fields(lines[0][1])):
        lines = lines[1:]  # header line
    if not lines:
        raise DataError(f"{path}: the file has a header but no data rows")
    width = len(fields(lines[0][1]))
    rows = np.empty((len(lines), width), np.float64)
    line_numbers = np.empty(len(lines), np.int64)
    for i, (lineno, line) in enumerate(lines):
        cells = fields(line)
        if len(cells) != width:
            raise DataError(
                f"{path}: line {lineno} has {len(cells)} columns; expected {width} "
                f"like line {lines[0][0]}"
            )
        for j, cell in enumerate(cells):
            try:
                rows[i, j] = float(cell)
            except ValueError as exc:
                raise DataError(
                    f"{path}: line {lineno}, column {j + 1}: {cell!r} is not a number"
                ) from exc
        line_numbers[i] = lineno
    return rows, line_numbers


def read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read .npy matrix ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise DataError(f"{path}: array has shape {shape}; expected a 2-D (rows, columns) matrix")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{path}: array dtype {array.dtype} is not numeric")
    if np.iscomplexobj(array):
        raise DataError(f"{path}: array is complex; expected real numbers")
    return array.astype(np.float64)


def check_finite(path: Path, rows: np.ndarray, line_numbers: np.ndarray | None) -> None:
    bad = np.argwhere(~np.isfinite(rows))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        where = (
            f"line {line_numbers[i]}, column {j + 1}"
            if line_numbers is not None
            else f"row {i}, column {j} (0-based)"
        )
        raise DataError(
            f"{path}: {where}: value {rows[i, j]} is not finite ({len(bad)} such cells); "
            f"expected finite numbers"
        )


def load_tabular(path_or_dir: Path, split: str) -> tuple[VectorDataset, DataInfo]:
    path = find_file(path_or_dir)
    if path.suffix.lower() == ".csv":
        rows, line_numbers = read_csv(path)
    else:
        rows, line_numbers = read_npy(path), None
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        raise DataError(f"{path}: matrix has shape {rows.shape}; expected rows and columns")
    check_finite(path, rows, line_numbers)
    train = rows[split_indices(len(rows), "train", source=str(path))]
    mean, std = train.mean(axis=0), train.std(axis=0)
    scale = np.maximum(np.abs(mean), 1.0)
    flat = np.flatnonzero(std <= MIN_REL_STD * scale)
    if len(flat):
        j = int(flat[0])
        label = f"column {j + 1}" if line_numbers is not None else f"column {j} (0-based)"
        raise DataError(
            f"{path}: {label} is constant ({mean[j]:g}) on the training rows, so it cannot be "
            f"standardised; drop it"
        )
    chosen = rows[split_indices(len(rows), split, source=str(path))]
    info = DataInfo(
        "tabular",
        "vector",
        (rows.shape[1],),
        None,
        flip=False,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )
    return VectorDataset((chosen - mean) / std), info
