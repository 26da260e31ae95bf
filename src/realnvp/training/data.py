"""The data a run trains on: its splits, and one epoch's batches in a reproducible order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from ..config import Config, ConfigError
from ..data import DataInfo, load_dataset
from ..distributed import DistInfo


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed`` (its shuffle and its noise)."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def load_split(cfg: Config, split: str, data_dir: str | None = None, download: bool = False,
               augment: bool | None = None) -> tuple[Dataset, DataInfo]:
    """Split ``split`` of the data set ``cfg`` names (``data_dir`` overrides ``cfg.data_dir``)."""
    extra = {"image_size": cfg.image_size} if cfg.image_size else {}
    if augment is not None:
        extra["augment"] = augment
    return load_dataset(cfg.data, split, data_dir or cfg.data_dir, download=download, seed=cfg.seed,
                        **extra)


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
    """A training split, the split that selects the model (``selection``), and the data's info.

    ``selection_name`` names the selection split in ``metrics.csv`` (``test_bpd``) and in
    ``eval.json``. A held-out validation split, where a data set has one, takes this place.
    """

    info: DataInfo
    train: Dataset
    test: Dataset
    selection_name: str = "test"

    @property
    def selection(self) -> Dataset:
        return self.test

    def check(self, batch_size: int, world_size: int) -> None:
        if len(self.train) < batch_size * world_size:
            raise ConfigError(f"the training split has {len(self.train)} examples, fewer than one "
                              f"batch ({batch_size} x {world_size} processes)")

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
    """The training and selection splits of ``cfg.data`` (the training split augmented)."""
    train, info = load_split(cfg, "train", download=download)
    test, _ = load_split(cfg, "test", augment=False)
    return TrainingData(info, train, test)
