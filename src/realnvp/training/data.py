"""The data a run trains on: its splits, and one epoch's batches in a reproducible order."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, Subset

from ..config import Config, ConfigError
from ..data import DataInfo, load_dataset
from ..data.datasets import ContextColumnsDataset, VectorDataset
from ..data.registry import no_labels
from ..distributed import DistInfo


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed`` (its shuffle and its noise)."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


#: The splits a run knows: ``valid`` is carved out of the data set's training split.
SPLITS = ("train", "valid", "test")

#: Seeds the validation carve: independent of the run's seed (every run of a data set selects on
#: the same examples) and of the data sets' own train/test splits.
VALID_SEED = 1


class Carved(Subset):
    """Rows ``indices`` of ``dataset``; ``data`` (when the data set holds one) is those rows, so
    that in-memory statistics (the histogram baseline) see the carved split."""

    @property
    def data(self):
        whole = getattr(self.dataset, "data", None)
        return None if whole is None else whole[torch.as_tensor(self.indices)]


def validation_indices(n: int, valid_size: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, valid)`` indices (sorted) of a training split of ``n`` examples.

    ``valid_size < 1`` is a fraction (rounded, at least one example), ``>= 1`` a count; the
    examples are the first of a permutation from ``numpy.random.default_rng(VALID_SEED)``, so
    they depend only on ``n``: the same for every run, seed and process count.
    """
    k = int(valid_size) if valid_size >= 1 else max(1, round(n * valid_size))
    if not 0 < k < n:
        raise ConfigError(f"valid_size {valid_size:g} leaves no training examples of {n}")
    perm = np.random.default_rng(VALID_SEED).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _unaugmented(dataset: Dataset) -> Dataset:
    view = getattr(dataset, "unaugmented", None)
    return view() if view is not None else dataset


def carve(dataset: Dataset, valid_size: float) -> tuple[Carved, Carved]:
    """``(train, valid)`` rows of a training split (:func:`validation_indices`); the validation
    rows are a view of the same data without augmentation."""
    train, valid = validation_indices(len(dataset), valid_size)
    return Carved(dataset, train.tolist()), Carved(_unaugmented(dataset), valid.tolist())


def context_columns(dataset: Dataset, info: DataInfo, columns: list[int]) -> tuple[Dataset, DataInfo]:
    """Tabular rows as ``(x, context)`` pairs for a conditional density ``p(x | context)``: the
    data set and the description of the modelled columns (``info.context_mean``/``std``: the
    context columns' statistics)."""
    if info.name != "tabular" or not isinstance(dataset, VectorDataset):
        raise ConfigError(f"context_columns: {info.name} has no columns to condition on (tabular data does)")
    bad = [c for c in columns if not 0 <= c < info.dim]
    if bad:
        raise ConfigError(f"context_columns: column {bad[0]} does not exist (the data has columns "
                          f"0 to {info.dim - 1})")
    if len(columns) >= info.dim:
        raise ConfigError(f"context_columns: conditioning on {len(columns)} of {info.dim} columns "
                          "leaves none to model")
    keep = [j for j in range(info.dim) if j not in set(columns)]
    info = dataclasses.replace(
        info, shape=(len(keep),), mean=tuple(info.mean[j] for j in keep),
        std=tuple(info.std[j] for j in keep), context_mean=tuple(info.mean[j] for j in columns),
        context_std=tuple(info.std[j] for j in columns))
    return ContextColumnsDataset(dataset, columns), info


def load_split(cfg: Config, split: str, data_dir: str | None = None, download: bool = False,
               augment: bool | None = None) -> tuple[Dataset, DataInfo]:
    """Split ``split`` (one of :data:`SPLITS`) of the data set ``cfg`` names (``data_dir``
    overrides ``cfg.data_dir``). With ``cfg.valid_size``, ``train`` is what the validation carve
    leaves; ``valid`` is never augmented."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    extra = {"image_size": cfg.image_size} if cfg.image_size else {}
    if augment is not None and split != "valid":
        extra["augment"] = augment
    source = "train" if split == "valid" else split
    if cfg.data.startswith("toy:") and source == "train":
        extra["num_samples"] = cfg.toy_train_size
    dataset, info = load_dataset(cfg.data, source, data_dir or cfg.data_dir, download=download,
                                 seed=cfg.seed, **extra)
    if cfg.conditional:
        if info.num_classes is None or getattr(dataset, "labels", None) is None:
            raise ConfigError(no_labels(cfg.data))
        dataset = dataset.labelled()
    if cfg.context_columns:
        dataset, info = context_columns(dataset, info, cfg.context_columns)
    if source == "test" or not cfg.valid_size:
        if split == "valid":
            raise ConfigError("this run has no validation split (valid_size is 0)")
        return dataset, info
    train, valid = carve(dataset, cfg.valid_size)
    return (valid if split == "valid" else train), info


class _Skip(Sampler):
    """The indices of ``sampler`` but its first ``skip``: an epoch resumed part-way. Skipping
    indices (not batches) fetches nothing, so augmentation draws no random numbers for them."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


@dataclass
class TrainingData:
    """A training split, an optional validation split, a test split, and the data's info.

    ``selection`` is the split scored after every epoch: the validation split, which selects the
    model (best checkpoint, early stopping), or, when there is none, the test split, which is only
    monitored (``best`` is then the last epoch's weights; ``selection_name`` says which, in
    ``metrics.csv``'s ``<name>_<metric>`` column).
    """

    info: DataInfo
    train: Dataset
    test: Dataset
    valid: Dataset | None = None

    @property
    def selection(self) -> Dataset:
        return self.valid if self.valid is not None else self.test

    @property
    def selection_name(self) -> str:
        return "valid" if self.valid is not None else "test"

    def check(self, batch_size: int, world_size: int) -> None:
        if len(self.train) < batch_size * world_size:
            raise ConfigError(f"the training split has {len(self.train)} examples, fewer than one "
                              f"batch ({batch_size} x {world_size} processes)")

    def steps_per_epoch(self, batch_size: int, dist: DistInfo) -> int:
        """Full batches per process and epoch (the loaders drop the last, partial one)."""
        per_process = len(self.train) // dist.world_size if dist.enabled else len(self.train)
        return per_process // batch_size

    def loader(self, seed: int, batch_size: int, dist: DistInfo, num_workers: int = 0,
               skip_batches: int = 0) -> DataLoader:
        """One epoch's batches, shuffled by ``seed`` alone, from batch ``skip_batches`` on.

        One process: ``DataLoader(shuffle=True, generator=Generator(seed))``'s order (the
        loader and its random sampler share the generator). Several: ``DistributedSampler``'s.
        """
        g = torch.Generator().manual_seed(seed)
        if dist.enabled:
            sampler = DistributedSampler(self.train, num_replicas=dist.world_size, rank=dist.rank,
                                         shuffle=True, seed=seed, drop_last=True)
        else:
            sampler = RandomSampler(self.train, generator=g)
        return DataLoader(self.train, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                          sampler=_Skip(sampler, skip_batches * batch_size), generator=g)


def load_training_data(cfg: Config, download: bool = False) -> TrainingData:
    """The training (augmented), validation and test splits of ``cfg.data``; the training split
    is read once and the validation rows are a view of it without augmentation."""
    whole, info = load_split(cfg.replace(valid_size=0), "train", download=download)
    test, _ = load_split(cfg, "test", augment=False)
    if not cfg.valid_size:
        return TrainingData(info, whole, test)
    train, valid = carve(whole, cfg.valid_size)
    return TrainingData(info, train, test, valid)
