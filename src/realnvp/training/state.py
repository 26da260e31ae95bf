"""What a run has done so far: the part of the training state that is not tensors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class State:
    """Progress of a run, saved as JSON in every checkpoint's metadata.

    The last five fields describe an epoch that a step limit (``max_steps``, ``time_budget``)
    cut short; they are zero at every epoch boundary.
    """

    epoch: int = 0  # last completed epoch
    step: int = 0  # optimizer steps taken
    best_score: float = math.inf  # lowest selection score at an epoch's end (e.g. bits/dim)
    lr_scale: float = 1.0  # halved at every rollback
    skipped_steps: int = 0  # non-finite steps skipped, over the whole run
    epochs_since_best: int = 0  # epochs that ended without a better selection score
    batches_done: int = 0  # batches of the current epoch drawn (taken or skipped)
    epoch_total: float = 0.0  # sum of the reported training values of its steps ...
    epoch_count: int = 0  # ... and their number
    bad_in_row: int = 0  # non-finite steps since the last good one
    seconds: float = 0.0  # time the current epoch has taken before the cut
    epoch_nfe: float = 0.0  # ODE function evaluations of its steps (models that report ``nfe``)

    @classmethod
    def from_dict(cls, d: dict) -> State:
        """From checkpoint metadata; checkpoints written before the selection score was named
        generically hold it as ``best_bpd``."""
        d = dict(d)
        if "best_bpd" in d:
            d.setdefault("best_score", d.pop("best_bpd"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def end_epoch(self, epoch: int) -> None:
        """Mark ``epoch`` complete: the within-epoch fields go back to zero."""
        self.epoch = epoch
        self.batches_done = self.epoch_count = self.bad_in_row = 0
        self.epoch_total = self.seconds = self.epoch_nfe = 0.0
