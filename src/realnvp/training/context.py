"""Everything a training run holds, in one object that the trainer's parts share."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import Config
from ..distributed import DistInfo
from ..models import Flow
from .data import TrainingData
from .ema import EMA
from .faults import Faults
from .objectives import Objective
from .state import State


@dataclass
class Context:
    """A run: its configuration and directory, processes and device, data, model (``net``: the
    model or its DDP wrapper, what a training forward pass calls), objective, optimizer, moving
    average, progress, fault hooks and log (rank 0 prints; the others are silent)."""

    cfg: Config
    run_dir: Path
    dist: DistInfo
    device: torch.device
    data: TrainingData
    model: Flow
    objective: Objective
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    state: State
    faults: Faults
    log: Callable[..., None]
    net: nn.Module | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates and writes files."""
        return self.dist.rank == 0

    @property
    def eval_model(self) -> Flow:
        """The weights that are evaluated and sampled: the moving average, if the run keeps one."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the model's parameters, then the objective's own."""
        return list(itertools.chain(self.model.parameters(), self.objective.parameters()))

    def buffers(self) -> list[Tensor]:
        """The state a forward pass may move (batch-norm statistics), the objective's included."""
        return list(itertools.chain(self.model.buffers(), self.objective.buffers()))
