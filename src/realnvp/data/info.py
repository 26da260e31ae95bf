"""``DataInfo``: what a model needs to know about a data set, serialisable to JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from .errors import DataError

Kind = Literal["image", "vector"]


@dataclass(frozen=True)
class DataInfo:
    """Static description of a loaded data set.

    Attributes:
        name: registry name, e.g. ``"cifar10"`` or ``"toy:moons"``.
        kind: ``"image"`` (items are uint8 ``(C, H, W)`` tensors with values in ``[0, K-1]``) or
            ``"vector"`` (items are float32 ``(D,)`` tensors).
        shape: item shape, ``(C, H, W)`` or ``(D,)``.
        num_levels: K, the number of discrete values per pixel (17 for digits, 256 for 8-bit
            images); ``None`` for continuous data.
        flip: whether horizontal-flip augmentation is part of the paper's recipe for this set.
        mean, std: per-feature standardisation statistics (tabular data only, computed on the
            train split and already applied to the items of both splits); ``None`` otherwise.
        context_mean, context_std: for a conditional density of tabular data
            (``context_columns``), the standardisation statistics of the columns that are the
            context (the data set's items are then ``(x, context)`` pairs; ``mean``/``std`` and
            ``shape`` describe the modelled columns alone); ``None`` otherwise.
        num_classes: the number of class labels the data set's reader keeps beside the images
            (labels ``0..num_classes-1``, for class-conditional models); ``None``: unlabelled.
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    num_levels: int | None
    flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    context_mean: tuple[float, ...] | None = None
    context_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "vector"):
            raise DataError(f"DataInfo.kind must be 'image' or 'vector', got {self.kind!r}")
        # Normalise sequences (e.g. lists from JSON) to tuples so instances stay hashable.
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        expected_rank = 3 if self.kind == "image" else 1
        if len(self.shape) != expected_rank or any(s < 1 for s in self.shape):
            raise DataError(
                f"DataInfo.shape must be {expected_rank} positive integers for kind "
                f"{self.kind!r}, got {self.shape}"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != self.dim:
                    raise DataError(f"DataInfo.{key} has {len(value)} entries, expected {self.dim}")
                object.__setattr__(self, key, value)
        if self.num_levels is not None:
            object.__setattr__(self, "num_levels", int(self.num_levels))

    @property
    def context_features(self) -> int:
        """The number of context columns of a conditional tabular density (0: none)."""
        return len(self.context_mean) if self.context_mean is not None else 0

    @property
    def dim(self) -> int:
        """Number of scalar dimensions of one item (C*H*W or D)."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        out = asdict(self)
        for key in ("shape", "mean", "std", "context_mean", "context_std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`DataError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataError(f"DataInfo.from_dict: unknown keys {unknown}; expected {sorted(names)}")
        missing = [k for k in ("name", "kind", "shape", "num_levels") if k not in data]
        if missing:
            raise DataError(f"DataInfo.from_dict: missing keys {missing}")
        return cls(**data)
