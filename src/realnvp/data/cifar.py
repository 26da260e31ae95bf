"""CIFAR-10, python version (``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``).

Each batch is a pickled dict whose ``b'data'`` entry is a uint8 ``(10000, 3072)`` array, each row
three 32x32 planes (R, G, B) in row-major order. The files are read with the restricted unpickler
in :mod:`.safe_pickle`, never with :func:`pickle.load`. Items: uint8 ``(3, 32, 32)``, 0..255.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .datasets import ArrayImageDataset
from .errors import DataError
from .info import DataInfo
from .paths import missing_message
from .pixels import as_uint8_pixels
from .safe_pickle import UnsafePickleError, safe_load

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
ROW = 3 * 32 * 32


def read_batch(path: Path) -> np.ndarray:
    """Read one batch file into a uint8 ``(N, 3, 32, 32)`` array."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR batch ({exc})") from exc
    try:
        batch = safe_load(raw)
    except UnsafePickleError as exc:
        raise DataError(
            f"{path}: not a plain CIFAR batch ({exc}); refusing to unpickle it"
        ) from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        RecursionError,
    ) as exc:
        raise DataError(
            f"{path}: corrupt or truncated CIFAR batch ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (expected a dict, got {type(batch).__name__})")
    data = batch.get(b"data", batch.get("data"))
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: CIFAR batch has no b'data' array")
    if data.ndim != 2 or data.shape[1] != ROW:
        raise DataError(
            f"{path}: b'data' has shape {data.shape}; expected (N, {ROW}) for 3x32x32 images"
        )
    data = as_uint8_pixels(data, f"{path} b'data'")
    return data.reshape(-1, 3, 32, 32)


def read_labels(path: Path, count: int) -> np.ndarray | None:
    """The batch's ``b'labels'`` (classes 0..9) as int64, or ``None`` when it has none that fit
    (the images are still usable; only a class-conditional model needs them)."""
    batch = safe_load(path.read_bytes())
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        return None
    return labels


def find_root(data_dir: Path) -> Path | None:
    for candidate in (data_dir, data_dir / FOLDER):
        if (candidate / TEST_FILES[0]).is_file() or (candidate / TRAIN_FILES[0]).is_file():
            return candidate
    return None


def load_cifar_split(root: Path, split: str, augment: bool) -> tuple[ArrayImageDataset, DataInfo]:
    names = TRAIN_FILES if split == "train" else TEST_FILES
    folder = find_root(root)
    wanted = [f"{FOLDER}/{n}" for n in names]
    if folder is None:
        raise DataError(missing_message("cifar10", root, wanted, can_download=True))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(missing_message("cifar10", folder, missing, can_download=True))
    batches = [read_batch(folder / n) for n in names]
    images = np.concatenate(batches)
    if len(images) == 0:
        raise DataError(f"cifar10: the {split} batches in {folder} hold no images")
    labels = [read_labels(folder / n, len(b)) for n, b in zip(names, batches, strict=True)]
    labels = None if any(lb is None for lb in labels) else np.concatenate(labels)
    info = DataInfo("cifar10", "image", (3, 32, 32), 256, flip=True,
                    num_classes=10 if labels is not None else None)
    return ArrayImageDataset(images, flip=augment, labels=labels), info
