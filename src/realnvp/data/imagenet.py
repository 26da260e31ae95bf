"""Downsampled ImageNet 32x32 / 64x64 (Chrabaszcz et al. 2017), npz release.

Files: ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` and ``val_data.npz`` (the
official validation set, used as the test split), either directly in ``data_dir`` or in one of its
immediate sub-folders (as the archives unpack, e.g. ``Imagenet32_train_npz/``). Each holds key
``data``: uint8 ``(N, 3*S*S)``, rows laid out channel-major like CIFAR. Items: uint8
``(3, S, S)``, 0..255. Loaded with ``np.load(allow_pickle=False)`` into one preallocated array
(shapes are read from the npy headers first, so memory peaks at the data set plus one batch).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from .datasets import ArrayImageDataset
from .errors import DataError
from .info import DataInfo
from .paths import missing_message
from .pixels import as_uint8_pixels

TRAIN_RE = re.compile(r"^train_data_batch_(\d+)\.npz$")
VAL_NAME = "val_data.npz"


def _candidate_dirs(root: Path) -> list[Path]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [root, *subdirs]


def find_files(root: Path, split: str) -> list[Path]:
    """The npz files of ``split``, train batches ordered by batch number."""
    found: dict[int, Path] = {}
    for folder in _candidate_dirs(root):
        for path in folder.glob("*.npz"):
            if split == "test":
                match = path.name == VAL_NAME
                number = 0
            else:
                m = TRAIN_RE.match(path.name)
                match, number = m is not None, int(m.group(1)) if m else 0
            if not match:
                continue
            if number in found:
                raise DataError(f"{path}: batch found twice (also {found[number]}); keep one copy")
            found[number] = path
    if split == "train" and found:
        gaps = sorted(set(range(1, max(found) + 1)) - set(found))
        if gaps:
            names = ", ".join(f"train_data_batch_{g}.npz" for g in gaps)
            raise DataError(f"imagenet: {root} lacks {names} (batches must be numbered 1..n)")
    return [found[k] for k in sorted(found)]


def _npz_data_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``data`` in an npz file, read from the npy header only."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except KeyError as exc:
        raise DataError(f"{path}: npz file has no 'data' array") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from exc
    return tuple(shape), np.dtype(dtype)


def _load_data(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["data"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        # ValueError covers object arrays (pickles are refused) and truncated members.
        raise DataError(f"{path}: cannot read 'data' ({exc})") from exc


def load_imagenet_split(
    name: str, root: Path, size: int, split: str, augment: bool
) -> tuple[ArrayImageDataset, DataInfo]:
    files = find_files(root, split)
    if not files:
        wanted = ["train_data_batch_<k>.npz"] if split == "train" else [VAL_NAME]
        raise DataError(missing_message(name, root, wanted, can_download=False))
    row = 3 * size * size
    counts = []
    for path in files:
        shape, _ = _npz_data_header(path)
        if len(shape) != 2 or shape[1] != row:
            raise DataError(
                f"{path}: 'data' has shape {shape}; expected (N, {row}) for 3x{size}x{size} "
                f"images (is this the right resolution?)"
            )
        counts.append(shape[0])
    if sum(counts) == 0:
        raise DataError(f"{name}: the {split} files in {root} hold no images")
    images = np.empty((sum(counts), 3, size, size), np.uint8)
    offset = 0
    for path, count in zip(files, counts, strict=True):
        data = _load_data(path)
        if data.shape != (count, row):
            raise DataError(f"{path}: 'data' has shape {data.shape}; header said {(count, row)}")
        images[offset : offset + count] = as_uint8_pixels(data, f"{path} 'data'").reshape(
            count, 3, size, size
        )
        offset += count
    info = DataInfo(name, "image", (3, size, size), 256, flip=False)
    return ArrayImageDataset(images, flip=augment), info
