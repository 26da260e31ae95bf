"""In-memory ``Dataset`` classes for array data, plus the shared flip augmentation."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import Dataset


def coin_flip() -> bool:
    """A fair coin from torch's global RNG.

    Using the global generator means ``torch.manual_seed`` makes augmentation reproducible, and
    DataLoader workers (which torch seeds from it) get distinct, reproducible streams.
    """
    return bool(torch.randint(2, (1,)).item())


class ArrayImageDataset(Dataset):
    """Images held in one uint8 tensor.

    Args:
        images: uint8 array of shape ``(N, C, H, W)``, values already checked to lie in
            ``[0, K-1]``.
        flip: apply a random horizontal flip (probability 1/2) to each item fetched.
        labels: ``(N,)`` integer class labels, or ``None``.

    Items are ``torch.uint8`` tensors of shape ``(C, H, W)`` (of a :meth:`labelled` view:
    ``(image, label)`` pairs); ``self.data`` is the whole ``(N, C, H, W)`` tensor (un-augmented)
    for code that wants to batch without a DataLoader, ``self.labels`` the ``(N,)`` labels.
    """

    def __init__(self, images: np.ndarray, flip: bool = False, labels: np.ndarray | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(
                f"expected a uint8 (N, C, H, W) array, got {images.dtype} {images.shape}"
            )
        # torch needs a contiguous, writable array to share memory; copy only when necessary so
        # large sets (ImageNet 64x64 is ~15 GB) are not held twice.
        array = np.ascontiguousarray(images)
        if not array.flags.writeable:
            array = array.copy()
        self.data = torch.from_numpy(array)
        self.flip = bool(flip)
        self.with_labels = False
        self.labels = None
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(array),) or labels.dtype.kind not in "iu":
                raise TypeError(f"expected ({len(array)},) integer labels, got {labels.dtype} {labels.shape}")
            self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.data.shape[0]

    def unaugmented(self) -> ArrayImageDataset:
        """The same images (shared, not copied) without the random flip."""
        view = copy.copy(self)
        view.flip = False
        return view

    def labelled(self) -> ArrayImageDataset:
        """The same images (shared) as ``(image, label)`` items."""
        if self.labels is None:
            raise ValueError("this data set has no labels")
        view = copy.copy(self)
        view.with_labels = True
        return view

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        item = self.data[index]
        # Clone so callers that modify items in place cannot corrupt the data set.
        item = item.flip(-1) if self.flip and coin_flip() else item.clone()
        return (item, self.labels[index]) if self.with_labels else item


class VectorDataset(Dataset):
    """Vectors held in one float32 tensor.

    Args:
        vectors: array of shape ``(N, D)``, finite; converted to float32.

    Items are ``torch.float32`` tensors of shape ``(D,)``; ``self.data`` is the ``(N, D)`` tensor.
    """

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2:
            raise TypeError(f"expected an (N, D) array, got shape {vectors.shape}")
        self.data = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32).copy())

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index].clone()

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        """The rows ``indices`` at once (``DataLoader``'s batched fetch; ``Subset`` passes it
        on): one indexing operation per batch instead of one per row, the same rows."""
        return list(self.data[torch.as_tensor(indices)].unbind(0))


class ContextColumnsDataset(Dataset):
    """A :class:`VectorDataset`'s rows as ``(x, context)`` pairs: ``context`` the columns
    ``columns`` (in that order), ``x`` the others (in theirs). ``self.data``: the ``x`` part."""

    def __init__(self, base: VectorDataset, columns: list[int]) -> None:
        keep = [j for j in range(base.data.shape[1]) if j not in set(columns)]
        self.data = base.data[:, keep]
        self.context = base.data[:, list(columns)]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index].clone(), self.context[index].clone()
