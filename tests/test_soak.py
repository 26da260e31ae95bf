"""Soak: many short epochs of a tiny model must not grow the process's memory.

30 epochs of 4 steps on a slice of the digits, with everything an epoch does (training, a fault
and a rollback now and then, evaluation, metrics, TensorBoard, a sample picture, two checkpoints);
the resident set size is read after every epoch through the ``log`` callback.
"""

from __future__ import annotations

import csv
import resource
import sys
from pathlib import Path

import pytest
from torch.utils.data import Subset

from realnvp.config import Config
from realnvp.training import Faults, load_training_data, train

EPOCHS = 30
MB = 1 << 20


def rss_bytes() -> int:
    """Current resident set size (Linux), else the peak so far."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class TwoBadStepsEvery20(Faults):
    """Two bad steps in a row every 5 epochs: skip, skip, roll back."""

    calls = 0

    def loss(self, ctx, loss):
        self.calls += 1
        return loss * float("nan") if self.calls % 20 in (6, 7) else loss


@pytest.mark.slow
def test_many_short_epochs_do_not_grow_memory(tmp_path):
    rss, messages = {}, []

    def log(message: str) -> None:
        messages.append(message)
        if message.startswith("epoch "):
            rss[int(message.split()[1].rstrip(":"))] = rss_bytes()

    cfg = Config().replace(epochs=EPOCHS, hidden_channels=4, num_blocks=1, batch_size=32,
                           eval_dequant_samples=1, num_samples=4, sample_every=1, max_bad_steps=2,
                           device="cpu")
    data = load_training_data(cfg)
    data.train, data.test = Subset(data.train, range(128)), Subset(data.test, range(64))
    train(cfg, tmp_path / "run", quiet=True, log=log, data=data, faults=TwoBadStepsEvery20())

    assert sorted(rss) == list(range(1, EPOCHS + 1))
    assert sum("rolled back" in m for m in messages) == 6  # the fault path was soaked too
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, EPOCHS + 1))
    growth = (rss[EPOCHS] - rss[10]) / MB
    trace = ", ".join(f"{e}: {rss[e] / MB:.0f}" for e in sorted(rss))
    assert growth < 30, f"resident memory grew by {growth:.1f} MB from epoch 10 to {EPOCHS} ({trace} MB)"
