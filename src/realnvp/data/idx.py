"""MNIST and Fashion-MNIST in the IDX format (``*-images-idx3-ubyte``, optionally ``.gz``).

IDX3 header: four big-endian uint32 words (magic 2051, count, rows, cols) followed by
``count * rows * cols`` uint8 pixels. Items: uint8 ``(1, 28, 28)``, values 0..255.
The official test files (``t10k-*``) are the test split.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .datasets import ArrayImageDataset
from .errors import DataError
from .info import DataInfo
from .paths import missing_message

IDX3_MAGIC = 2051
IDX1_MAGIC = 2049
HEADER = struct.Struct(">IIII")
PREFIX = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
# torchvision keeps the raw files in <root>/<Class>/raw; accept that layout too.
SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


def read_idx1_labels(images_path: Path, count: int) -> np.ndarray | None:
    """The class labels beside an image file (``*-labels-idx1-ubyte``, plain or gzip: magic
    2049, a count, one byte per label) as int64, or ``None`` when there is no such file or it does
    not hold ``count`` labels in 0..9 (the images are usable without; only a class-conditional
    model needs them)."""
    path = images_path.with_name(images_path.name.replace("-images-idx3-", "-labels-idx1-"))
    if not path.is_file():
        return None
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error):
        return None
    if len(raw) != 8 + count or struct.unpack_from(">II", raw) != (IDX1_MAGIC, count):
        return None
    labels = np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    return labels if labels.max(initial=0) <= 9 else None


def read_idx3(path: Path) -> np.ndarray:
    """Parse an IDX3 image file (plain or gzip) into a uint8 ``(N, rows, cols)`` array."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises EOFError for a truncated stream and BadGzipFile (an OSError) for garbage.
        raise DataError(
            f"{path}: cannot read IDX file ({exc}); the file is truncated or corrupt"
        ) from exc
    if len(raw) < HEADER.size:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX3 header (16 bytes)")
    magic, count, rows, cols = HEADER.unpack_from(raw)
    if magic != IDX3_MAGIC:
        raise DataError(
            f"{path}: IDX magic number {magic}; expected {IDX3_MAGIC} (uint8 images, 3 dims)"
        )
    expected = HEADER.size + count * rows * cols
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: file {state}: header says {count} images of {rows}x{cols} "
            f"({expected} bytes) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=HEADER.size).reshape(count, rows, cols)


def find_idx(root: Path, split: str) -> Path | None:
    for sub in SUBDIRS:
        for suffix in ("", ".gz"):
            candidate = root / sub / (PREFIX[split] + suffix)
            if candidate.is_file():
                return candidate
    return None


def looked_for(split: str) -> list[str]:
    return [PREFIX[split], PREFIX[split] + ".gz"]


def load_idx_split(
    name: str, root: Path, split: str, augment: bool
) -> tuple[ArrayImageDataset, DataInfo]:
    path = find_idx(root, split)
    if path is None:
        raise DataError(missing_message(name, root, looked_for(split), can_download=True))
    images = read_idx3(path)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]}; expected 28x28")
    if len(images) == 0:
        raise DataError(f"{path}: the file holds no images")
    labels = read_idx1_labels(path, len(images))
    info = DataInfo(name, "image", (1, 28, 28), 256, flip=False,
                    num_classes=10 if labels is not None else None)
    return ArrayImageDataset(images[:, None, :, :], flip=augment, labels=labels), info
