"""Image-folder data sets: CelebA, LSUN (exported images) and any ``folder`` of images.

All decode lazily (see :mod:`.images`) and return uint8 ``(3, S, S)`` items, values 0..255.

- ``celeba``: ``img_align_celeba/*.jpg`` (or the jpgs directly in ``data_dir``); central
  148x148 crop, LANCZOS resize to 64x64. Split: if ``list_eval_partition.txt`` is found (in
  ``data_dir`` or beside the image folder), partition 0 is train and partition 1 (validation,
  the set the RealNVP paper reports on) is test; partition 2 is unused. Otherwise a fixed seeded
  10% test split.
- ``lsun-bedroom|tower|church``: images under ``data_dir/<category>/`` (``bedroom``, ``tower``,
  ``church_outdoor`` or ``church``, optionally with ``_train``) or ``data_dir`` itself, searched
  recursively (the LSUN export tool writes nested folders of .webp files). Shorter side resized to
  96; random 64x64 crop when augmenting, centre crop otherwise. Fixed seeded 10% test split.
- ``folder``: any images (png, jpg, jpeg, bmp, webp) under ``data_dir``, recursively; converted
  to RGB, shorter side resized to ``image_size`` then centre-cropped. Fixed seeded 10% test split.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .images import (
    IMAGE_EXTENSIONS,
    CenterCropResize,
    ImageFileDataset,
    ShorterSide,
    list_images,
)
from .info import DataInfo
from .paths import missing_message
from .splits import split_indices

PARTITION_FILE = "list_eval_partition.txt"
CELEBA_DIR = "img_align_celeba"
CELEBA_PARTITION = {"train": 0, "test": 1}
LSUN_DIRS = {
    "lsun-bedroom": ("bedroom", "bedroom_train"),
    "lsun-tower": ("tower", "tower_train"),
    "lsun-church": ("church_outdoor", "church_outdoor_train", "church", "church_train"),
}
EXT_GLOBS = [f"*{e}" for e in IMAGE_EXTENSIONS]


def _images_or_error(name: str, root: Path, looked_for: list[str]) -> list[Path]:
    if not root.is_dir():
        raise DataError(missing_message(name, root, looked_for, can_download=False))
    paths = list_images(root)
    if not paths:
        raise DataError(f"{name}: no image files ({', '.join(EXT_GLOBS)}) found under {root}")
    return paths


def _check_first(dataset: ImageFileDataset) -> None:
    # Decode one image now so a folder of the wrong thing fails at load time, not mid-epoch.
    if len(dataset):
        dataset.load(0, augment=False)


def _seeded_split(name: str, root: Path, paths: list[Path], split: str) -> list[Path]:
    return [paths[i] for i in split_indices(len(paths), split, source=f"{name} ({root})")]


def _read_partition(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read partition file ({exc})") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path}: line {lineno}: expected '<image name> <0|1|2>', got {line.strip()!r}"
            )
        table[parts[0]] = int(parts[1])
    return table


def load_celeba(root: Path, split: str, augment: bool) -> tuple[ImageFileDataset, DataInfo]:
    image_dir = root / CELEBA_DIR if (root / CELEBA_DIR).is_dir() else root
    looked = [f"{CELEBA_DIR}/*.jpg", "*.jpg"]
    paths = _images_or_error("celeba", image_dir, looked)
    partition = next(
        (p for p in (root / PARTITION_FILE, image_dir.parent / PARTITION_FILE) if p.is_file()),
        None,
    )
    if partition is not None:
        table = _read_partition(partition)
        by_name = {p.name: p for p in paths}
        wanted = sorted(n for n, part in table.items() if part == CELEBA_PARTITION[split])
        absent = [n for n in wanted if n not in by_name]
        if absent:
            raise DataError(
                f"{partition}: lists {len(absent)} {split} image(s) missing from {image_dir}, "
                f"e.g. {absent[0]}"
            )
        chosen = [by_name[n] for n in wanted]
        if not chosen:
            raise DataError(f"{partition}: no images in partition {CELEBA_PARTITION[split]}")
    else:
        chosen = _seeded_split("celeba", image_dir, paths, split)
    dataset = ImageFileDataset(chosen, CenterCropResize(148, 64), 64, flip=augment)
    _check_first(dataset)
    return dataset, DataInfo("celeba", "image", (3, 64, 64), 256, flip=True)


def load_lsun(
    name: str, root: Path, split: str, augment: bool
) -> tuple[ImageFileDataset, DataInfo]:
    subdirs = LSUN_DIRS[name]
    folder = next((root / d for d in subdirs if (root / d).is_dir()), root)
    paths = _images_or_error(name, folder, [f"{d}/" for d in subdirs] + ["images in data_dir"])
    chosen = _seeded_split(name, folder, paths, split)
    dataset = ImageFileDataset(chosen, ShorterSide(96), 64, random_crop=augment, flip=augment)
    _check_first(dataset)
    return dataset, DataInfo(name, "image", (3, 64, 64), 256, flip=True)


def load_folder(
    root: Path, split: str, augment: bool, image_size: int = 32
) -> tuple[ImageFileDataset, DataInfo]:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"folder: image_size must be a positive integer, got {image_size!r}")
    paths = _images_or_error("folder", root, ["image files"])
    chosen = _seeded_split("folder", root, paths, split)
    dataset = ImageFileDataset(chosen, ShorterSide(image_size), image_size, flip=augment)
    _check_first(dataset)
    return dataset, DataInfo("folder", "image", (3, image_size, image_size), 256, flip=False)
