"""Between a data set's examples and the model's space: model input, and pixels back for display.

Image data sets hold integers in ``[0, K−1]``; the model sees them dequantized to ``[0, 1)``
(:class:`~realnvp.bijectors.Dequantize`, paper §4.1). Vector data sets are already continuous
(standardised) and pass through.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bijectors import Dequantize
from .data import DataInfo
from .models.dequantization import UniformDequantizer


def batch_parts(batch, info: DataInfo, device=None) -> tuple[Tensor, Tensor | None]:
    """A loader's batch as ``(x, context)``: a labelled data set's ``[images, labels]`` gives the
    one-hot ``(B, num_classes)`` context of a class-conditional model, a tabular data set's
    ``[x, context columns]`` its (standardised) context; a plain batch ``None``."""
    if isinstance(batch, Tensor):
        return batch, None
    from .nets.context import one_hot

    x, c = batch
    context = c if c.is_floating_point() else one_hot(c, info.num_classes)
    return x, context.to(device if device is not None else x.device)


def class_context(model, n: int, device, label: int | None = None) -> Tensor | None:
    """The context for ``n`` samples of a class-conditional model: every sample of class
    ``label``, or (``None``) the classes in turn, ``0, 1, …, K−1, 0, …`` (a picture's rows then
    run through the classes). ``None`` for an unconditional model, which refuses a label."""
    k = model.context_features
    if not k:
        if label is not None:
            raise ValueError("this model is unconditional: a label needs a run trained with "
                             "conditional=true")
        return None
    from .nets.context import one_hot

    labels = torch.full((n,), label) if label is not None else torch.arange(n) % k
    return one_hot(labels, k).to(device)


def column_context(values: list[float] | None, info: DataInfo, n: int, device) -> Tensor | None:
    """The ``(n, k)`` context of a conditional tabular density from the context columns'
    ``values`` in the data's units (standardised as the training rows were); ``None`` when the
    run has no context columns, which refuses values."""
    k = info.context_features
    if not k:
        if values is not None:
            raise ValueError("this run has no context columns: --context needs a run trained "
                             "with context_columns")
        return None
    if values is None or len(values) != k:
        got = "none" if values is None else len(values)
        raise ValueError(f"this run is conditioned on {k} context column(s): give {k} value(s), got {got}")
    return standardised_context(torch.tensor([values], dtype=torch.float32), info).expand(n, k).to(device)


def standardised_context(values: Tensor, info: DataInfo) -> Tensor:
    """``(n, k)`` context columns in the data's units, standardised as the training rows were
    (with the context columns' training statistics)."""
    mean = torch.tensor(info.context_mean, dtype=values.dtype)
    std = torch.tensor(info.context_std, dtype=values.dtype)
    return (values - mean) / std


def model_input(x: Tensor, info: DataInfo, dtype=torch.float32, shard: tuple[int, int] = (0, 1),
                dequantizer=None) -> tuple[Tensor, Tensor | None]:
    """A data batch ``(B, *shape)`` to the model's input space: ``(y, log_q)``.

    Images are dequantized to ``y = (x + u)/K``, ``u ~ q(u|x)`` from ``dequantizer`` (a
    :mod:`~realnvp.models.dequantization` module, or its DDP wrapper; ``None``: uniform noise from
    the global RNG); ``log_q`` ``(B,)`` is ``log q(u|x)`` in nats (0 for uniform noise), so that
    ``log p(y) − log_q`` enters :func:`~realnvp.bits_per_dim` as the bound on ``log P(x)``.
    Vectors pass through with ``log_q = None``. ``shard = (rank, world)``: this batch holds rows
    ``rank::world`` of a global batch (see :func:`~realnvp.bijectors.preprocessing.shard_noise`),
    so every process count sees the same noise for an example.
    """
    x = x.to(dtype)
    if info.kind != "image":
        return x, None
    q = dequantizer if dequantizer is not None else UniformDequantizer(info.num_levels)
    u, log_q = q(x, shard)
    return Dequantize(info.num_levels)(x, noise=u)[0], log_q


def to_levels(y: Tensor, info: DataInfo) -> Tensor:
    """Model-space images (``[0, 1]`` up to the logit margin) to the data's uint8 levels
    ``0…K−1``: the inverse of dequantization, what the data set holds and ``score`` reads."""
    k = info.num_levels or 256
    return torch.floor(y.clamp(0, 1) * k).clamp_(0, k - 1).to(torch.uint8)


def to_pixels(y: Tensor, info: DataInfo) -> Tensor:
    """Model-space images to uint8 ``0…255`` for display (levels spread over the 8 bits)."""
    k = info.num_levels or 256
    return torch.round(to_levels(y, info).double() * (255 / (k - 1))).to(torch.uint8)


def pixels_to_unit(x: Tensor, info: DataInfo) -> Tensor:
    """Integer pixels to the centre of their dequantization bins, ``(x + 0.5)/K`` (no noise)."""
    return (x.float() + 0.5) / info.num_levels
