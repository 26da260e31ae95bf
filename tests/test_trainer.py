"""The trainer's public seams and step limits: objectives, optimizer, clock, data order.

``max_steps`` / ``time_budget`` stop a run at a step boundary (part-way through an epoch or at
its end), checkpoint and evaluate it, and a resume then gives the numbers and weights of the run
never stopped. A custom objective, a custom optimizer and a fake clock plug in without touching
the loop. The epoch order is ``DataLoader(shuffle=True, generator=Generator(seed))``'s, which
earlier runs used, so their numbers still reproduce.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from helpers import cli, metrics_rows, same
from realnvp import atomic, checkpoint
from realnvp.config import Config
from realnvp.distributed import DistInfo
from realnvp.training import MaximumLikelihood, Objective, load_training_data, train


def tiny(**changes) -> Config:
    base = dict(epochs=2, hidden_channels=4, num_blocks=1, eval_dequant_samples=1, num_samples=4,
                batch_size=32, sample_every=0, device="cpu", ema_decay=0.9)
    return Config().replace(**{**base, **changes})


@pytest.fixture(scope="module")
def data():
    d = load_training_data(tiny())
    d.train, d.test = Subset(d.train, range(192)), Subset(d.test, range(64))
    return d


def run(cfg, path, data, **kwargs) -> dict:
    return train(cfg, path, quiet=True, log=lambda *a: None, data=data, **kwargs)


def weights(path):
    tensors, meta = checkpoint.load(path / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta["state"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("whole") / "run"
    return path, run(tiny(), path, data)


@pytest.mark.parametrize("stops", [(4, 9), (6,), (1, 2, 3, 7, 11)])
def test_stopping_at_step_limits_then_resuming_gives_the_uninterrupted_run(tmp_path, data, uninterrupted,
                                                                          stops):
    whole, whole_result = uninterrupted
    path = tmp_path / "run"
    for i, limit in enumerate(stops):
        result = run(tiny(), path, data, resume=i > 0, max_steps=limit)
        assert result["stopped"] == "max_steps" and result["steps"] == limit
        assert json.loads((path / "eval.json").read_text())["stopped"] == "max_steps"
        assert math.isfinite(result["bits_per_dim"])
        assert int(checkpoint.load(path / "checkpoints" / "last.safetensors")[1]["state"]["step"]) == limit
    result = run(tiny(), path, data, resume=True)
    assert "stopped" not in result
    assert metrics_rows(path) == metrics_rows(whole)
    (a, state_a), (b, state_b) = weights(path), weights(whole)
    assert same(a, b)
    assert {k: v for k, v in state_a.items() if k != "seconds"} == \
        {k: v for k, v in state_b.items() if k != "seconds"}
    assert result == whole_result


def _strict(text: str):
    """``text`` as JSON, refusing the non-standard ``Infinity`` and ``NaN``."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_a_run_stopped_before_any_validation_claims_no_best_score(tmp_path, capsys, data):
    """Stopped inside its first epoch, a run has scored nothing on the validation split: its
    ``eval.json`` and ``realnvp info --json`` name no best score (and stay standard JSON)."""
    assert data.valid is not None
    path = tmp_path / "run"
    run(tiny(), path, data, max_steps=2)
    assert not any(key.startswith("best_") for key in _strict((path / "eval.json").read_text()))
    code, out, _ = cli(capsys, "info", path, "--json")
    assert code == 0 and _strict(out)["best_selection_score"] is None
    run(tiny(), path, data, resume=True, max_steps=7)  # one epoch scored
    assert math.isfinite(_strict((path / "eval.json").read_text())["best_valid_bpd_during_training"])
    assert math.isfinite(_strict(cli(capsys, "info", path, "--json")[1])["best_selection_score"])


class Clock:
    """A fake clock: every reading is one second later than the one before."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_the_time_budget_stops_at_a_step_boundary_on_the_given_clock(tmp_path, data, uninterrupted):
    path = tmp_path / "run"
    result = run(tiny(), path, data, clock=Clock(), time_budget=5)
    assert result["stopped"] == "time_budget" and 0 < result["steps"] < 12
    run(tiny(), path, data, resume=True, clock=Clock())
    assert metrics_rows(path) == metrics_rows(uninterrupted[0])
    with open(path / "metrics.csv", newline="") as f:  # seconds on the given clock: whole seconds
        assert all(float(r["seconds"]).is_integer() and float(r["seconds"]) > 0 for r in csv.DictReader(f))


def test_a_custom_objective_and_optimizer_plug_in_without_touching_the_loop(tmp_path, data):
    class HalfLikelihood(MaximumLikelihood):
        """Another objective (half the loss), with a trainable module of its own."""

        metric, score_key = "half", "half_bpd"

        def __init__(self):
            super().__init__()
            self.offset = torch.nn.Parameter(torch.zeros(()))

        def loss(self, ctx, x):
            loss, bpd = super().loss(ctx, x)
            return 0.5 * loss + self.offset ** 2, 0.5 * bpd

        def evaluate(self, ctx, model, dataset, final, progress=False):
            result = super().evaluate(ctx, model, dataset, final, progress)
            return {**result, "half_bpd": result["bits_per_dim"] / 2}

    made = []

    def sgd(params, cfg, device):
        made.append(torch.optim.SGD(params, lr=cfg.lr))
        return made[-1]

    path = tmp_path / "run"
    objective = HalfLikelihood()
    result = run(tiny(epochs=1), path, data, objective=objective, optimizer=sgd)
    rows = metrics_rows(path)
    assert list(rows[0]) == ["epoch", "step", "train_half", "valid_half", "lr", "skipped_steps"]
    assert float(rows[0]["valid_half"]) == pytest.approx(result["best_valid_half_during_training"])
    assert isinstance(made[0], torch.optim.SGD)
    assert any(p is objective.offset for g in made[0].param_groups for p in g["params"])
    tensors, _ = checkpoint.load(path / "checkpoints" / "last.safetensors")
    assert "objective.offset" in tensors


def test_the_base_objective_says_what_is_missing():
    with pytest.raises(NotImplementedError):
        Objective().loss(None, None)


def test_the_epoch_order_is_that_of_a_shuffling_dataloader(data):
    for seed in (0, 7, 2**40 + 3):
        ours = torch.cat(list(data.loader(seed, 32, DistInfo())))
        theirs = torch.cat(list(DataLoader(data.train, batch_size=32, drop_last=True, shuffle=True,
                                           generator=torch.Generator().manual_seed(seed))))
        assert torch.equal(ours, theirs)
        rest = torch.cat(list(data.loader(seed, 32, DistInfo(), skip_batches=2)))
        assert torch.equal(rest, theirs[64:])


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "eval.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_a_second_writer_of_a_run_directory_is_refused_naming_the_holder(tmp_path, data):
    from realnvp.runs import RunError
    from realnvp.training.rundir import RunLock

    path = tmp_path / "run"
    held = RunLock(path).acquire()
    try:
        with pytest.raises(RunError, match=r"in use by process \d+ on "):
            run(tiny(epochs=1), path, data)
        assert sorted(p.name for p in path.iterdir()) == [".lock"]  # nothing written
    finally:
        held.release()
    run(tiny(epochs=1), path, data)  # the holder gone (as after a crash), the run goes ahead
    with pytest.raises(RunError, match="in use by"):  # and a resume while it trains is refused
        held = RunLock(path).acquire()
        run(tiny(epochs=2), path, data, resume=True)
    held.release()


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_started_again(tmp_path, data):
    from realnvp.runs import RunError
    from realnvp.training import Faults, TrainingError

    class AllBad(Faults):
        def loss(self, ctx, loss):
            return loss * float("nan")

    path = tmp_path / "run"
    with pytest.raises(TrainingError):
        run(tiny(epochs=1, max_bad_steps=2), path, data, faults=AllBad())
    with pytest.raises(RunError, match="stopped before its first checkpoint.*--overwrite"):
        run(tiny(epochs=1), path, data)
    result = run(tiny(epochs=1, lr=5e-4), path, data, overwrite=True)
    assert math.isfinite(result["bits_per_dim"])
    assert json.loads((path / "config.json").read_text())["lr"] == 5e-4
    with pytest.raises(RunError, match="holds a run with checkpoints"):
        run(tiny(epochs=1), path, data, overwrite=True)
