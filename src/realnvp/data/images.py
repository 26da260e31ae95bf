"""Lazily decoded image folders: listing, decoding with Pillow, resizing and cropping.

Images are decoded per item (never all held in memory), converted to 8-bit RGB, resized with
Pillow's LANCZOS filter (antialiased when shrinking), cropped to a square and returned as uint8
``(3, S, S)`` tensors with values 0..255.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .datasets import coin_flip
from .errors import DataError

#: File suffixes read as images (folder data sets, ``realnvp score``), lower case.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RESAMPLE = Image.Resampling.LANCZOS


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path for a stable order.

    Hidden files (``.name``, e.g. macOS ``._`` resource forks) are skipped.
    """
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


#: Image modes read as they are (8 bits per channel; alpha must be opaque) and 16-bit greyscale
#: modes, scaled to 8 bits; anything else (32-bit integers, floats) is refused.
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "LA", "PA", "RGBA", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(path: Path, mode: str = "RGB", max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit ``mode`` (``"L"`` or ``"RGB"``) image, one rule for training
    and scoring: 8-bit images as they are; 16-bit greyscale scaled to 8 bits
    (``round(v·255/65535)``, not clipped); alpha dropped only where every pixel is opaque;
    32-bit and floating-point images refused. ``max_pixels``: refuse larger images before
    decoding them."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise DataError(f"{path}: image is {w}x{h}, far larger than the model's input; "
                                "resize it first")
            if img.mode in SIXTEEN_BIT_MODES:
                wide = np.asarray(img, dtype=np.uint16).astype(np.float64)
                img8 = Image.fromarray(np.rint(wide * 255 / 65535).astype(np.uint8), mode="L")
                return img8.convert(mode)
            if img.mode not in EIGHT_BIT_MODES:
                raise DataError(f"{path}: image mode {img.mode} (32-bit or floating point) is not "
                                "read; save it with 8 or 16 bits per channel")
            if "A" in img.mode or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA"))[..., 3]
                if (alpha < 255).any():
                    raise DataError(f"{path}: the image has transparent pixels and the model has "
                                    "no alpha channel; flatten it onto a background first")
            return img.convert(mode)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and 'image file is truncated' are OSErrors.
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return img.resize(new, RESAMPLE)


def crop_square(img: Image.Image, size: int, random: bool) -> Image.Image:
    """A ``size`` x ``size`` crop: centred, or at a position drawn from torch's global RNG."""
    w, h = img.size
    if random:
        left = int(torch.randint(w - size + 1, (1,)).item())
        top = int(torch.randint(h - size + 1, (1,)).item())
    else:
        left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


class ShorterSide:
    """Preparation step: resize the shorter side to ``size`` (LSUN: 96; folder: image_size)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image, path: Path) -> Image.Image:
        return resize_shorter(img, self.size)


class CenterCropResize:
    """Preparation step: central ``crop`` x ``crop`` window, then resize to ``size`` (CelebA)."""

    def __init__(self, crop: int, size: int) -> None:
        self.crop, self.size = crop, size

    def __call__(self, img: Image.Image, path: Path) -> Image.Image:
        w, h = img.size
        if w < self.crop or h < self.crop:
            raise DataError(
                f"{path}: image is {w}x{h}; expected at least {self.crop}x{self.crop} "
                f"for the central crop"
            )
        img = crop_square(img, self.crop, random=False)
        return img.resize((self.size, self.size), RESAMPLE)


class ImageFileDataset(Dataset):
    """Images decoded from files on each access.

    Args:
        paths: the image files of this split.
        prepare: callable ``(PIL image, path) -> PIL image`` applied after decoding.
        size: side of the final square crop.
        random_crop: crop at a random position (training augmentation) instead of the centre.
        flip: random horizontal flip with probability 1/2.

    Items: ``torch.uint8`` tensors of shape ``(3, size, size)``, values 0..255. Decoding errors
    raise :class:`DataError` naming the file. Randomness comes from torch's global RNG.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        prepare,
        size: int,
        random_crop: bool = False,
        flip: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.prepare = prepare
        self.size = size
        self.random_crop = bool(random_crop)
        self.flip = bool(flip)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, augment: bool) -> torch.Tensor:
        path = self.paths[index]
        img = self.prepare(open_image(path), path)
        if min(img.size) < self.size:
            raise DataError(
                f"{path}: image is {img.size[0]}x{img.size[1]} after resizing; expected at "
                f"least {self.size}x{self.size}"
            )
        img = crop_square(img, self.size, random=augment and self.random_crop)
        pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        if augment and self.flip and coin_flip():
            pixels = pixels[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(index, augment=True)

    def unaugmented(self) -> ImageFileDataset:
        """The same files with centre crops and no flips."""
        view = copy.copy(self)
        view.random_crop = view.flip = False
        return view
