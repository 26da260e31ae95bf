"""Data sets for RealNVP: images (uint8, ``(C, H, W)``) and vectors (float32, ``(D,)``).

Public API::

    from realnvp.data import load_dataset, DataInfo, DATASETS, DataError
    train_ds, info = load_dataset("cifar10", split="train", data_dir="data/cifar10")

See :func:`load_dataset` for the arguments, and the module of each family (``digits``, ``idx``,
``cifar``, ``imagenet``, ``folders``, ``tabular``, ``toy``) for file layouts and splits.
"""

from .errors import DataError
from .info import DataInfo
from .paths import default_data_dir
from .registry import DATASETS, FLIP_DATASETS, load_dataset

__all__ = ["DATASETS", "FLIP_DATASETS", "DataError", "DataInfo", "default_data_dir", "load_dataset"]
