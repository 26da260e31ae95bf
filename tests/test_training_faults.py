"""Training faults and crashes: nothing lost, and a resumed run gives the uninterrupted numbers.

Non-finite losses and gradients skipped without a trace in the model, Adam or batch norm; repeated
faults rolled back to the last checkpoint with half the learning rate (or, before the first
checkpoint, the run stopped in one line); the same seed giving the same checkpoint bit for bit;
crashes at chosen moments (between the last and best checkpoints, while metrics are rewritten,
while the run folder is set up) losing nothing; SIGKILL at random moments of a training run and of
its resumption, then a resume, giving the numbers of the run never interrupted; and a resume from
a corrupt last checkpoint falling back to the previous one. In-process runs are tiny (4 hidden
channels, one residual block) on a subset of the digits (192 train / 64 test examples, 6 steps an
epoch); the killed runs use the whole digits set in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from helpers import (
    CORRUPTIONS,
    ENV,
    REFERENCE_EPOCHS,
    TINY_CPU,
    cli,
    copy_run,
    files,
    metrics_rows,
    one_line,
    posix_only,
    run_cli_process,
    same,
)
from realnvp import checkpoint
from realnvp.config import Config
from realnvp.runs import RunError
from realnvp.training import Faults, TrainingError, load_training_data, train


@pytest.fixture(scope="module")
def small_digits():
    """The digits data set cut to 192 training and 64 test examples (6 steps of 32 an epoch),
    given to the trainer through its ``data`` seam."""
    data = load_training_data(tiny_config())
    data.train, data.test = Subset(data.train, range(192)), Subset(data.test, range(64))
    return data


def tiny_config(**changes) -> Config:
    base = dict(epochs=2, hidden_channels=4, num_blocks=1, eval_dequant_samples=1, num_samples=4,
                batch_size=32, sample_every=0, device="cpu")
    return Config().replace(**{**base, **changes})


class PoisonGradient(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


def snapshot(model, optimizer) -> dict:
    opt = optimizer.state_dict()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "optim": {(i, k): (v.clone() if torch.is_tensor(v) else v)
                  for i, s in opt["state"].items() for k, v in s.items()},
        "lr": opt["param_groups"][0]["lr"],
    }


def differences(a: dict, b: dict) -> list[str]:
    out = []
    for part in ("params", "buffers", "optim"):
        if a[part].keys() != b[part].keys():
            out.append(f"{part}: keys")
            continue
        out += [f"{part}: {k}" for k in a[part] if not torch.equal(torch.as_tensor(a[part][k]),
                                                                   torch.as_tensor(b[part][k]))]
    return out


class Recording(Faults):
    """The trainer's fault hooks: a snapshot of the model and optimizer before every step, and a
    NaN loss or a NaN gradient on the chosen steps (counted over the run, skipped ones too)."""

    def __init__(self, nan_loss=(), nan_grad=()):
        self.nan_loss, self.nan_grad = set(nan_loss), set(nan_grad)
        self.snapshots = []

    def before_step(self, ctx):
        self.snapshots.append(snapshot(ctx.model, ctx.optimizer))

    def loss(self, ctx, loss):
        n = len(self.snapshots) - 1
        if n in self.nan_loss:
            loss = loss * float("nan")
        if n in self.nan_grad:
            loss = PoisonGradient.apply(loss)
        return loss


def quiet_train(cfg, run, data, log=None, **kwargs):
    return train(cfg, run, quiet=True, log=log or (lambda *a: None), data=data, **kwargs)


def test_a_non_finite_step_is_skipped_without_a_trace(tmp_path, small_digits):
    faults = Recording(nan_loss={2}, nan_grad={4, 9})
    log = []
    quiet_train(tiny_config(), tmp_path / "run", small_digits, log.append, faults=faults)
    snaps = faults.snapshots
    assert len(snaps) == 12
    for bad in (2, 4, 9):
        # parameters, Adam's moments and step count, batch-norm running statistics: untouched
        assert differences(snaps[bad], snaps[bad + 1]) == [], bad
    for good in (1, 3, 8):  # the check can see a step: good steps change all three
        changed = differences(snaps[good], snaps[good + 1])
        assert {c.split(":")[0] for c in changed} == {"params", "buffers", "optim"}
    warnings = [m for m in log if "non-finite loss or gradient" in m and "skipped" in m]
    assert len(warnings) == 3
    rows = metrics_rows(tmp_path / "run")
    assert [(r["step"], r["skipped_steps"]) for r in rows] == [("4", "2"), ("9", "3")]
    assert all(np.isfinite(float(r["train_bpd"])) for r in rows)


def test_repeated_faults_roll_back_to_the_last_checkpoint_with_half_the_learning_rate(
        tmp_path, small_digits):
    # Epoch 1: calls 0-5. Epoch 2: two good steps, then three bad ones in a row (max_bad_steps=3).
    faults = Recording(nan_loss={8, 10}, nan_grad={9})
    log = []
    cfg = tiny_config(max_bad_steps=3)
    quiet_train(cfg, tmp_path / "run", small_digits, log.append, faults=faults)
    snaps = faults.snapshots
    assert len(snaps) == 12
    assert any(m == "rolled back to epoch 1; learning rate now 0.0005" for m in log), log
    # After the rollback the model, Adam and batch norm are those of the end of epoch 1 ...
    assert differences(snaps[6], snaps[11]) == []
    assert differences(snaps[8], snaps[11]) != []  # ... not those of the steps before the faults
    assert snaps[10]["lr"] == pytest.approx(1e-3) and snaps[11]["lr"] == pytest.approx(5e-4)
    rows = metrics_rows(tmp_path / "run")
    # epoch 2: 6 steps of epoch 1 + the one good step after the rollback; 3 steps skipped
    assert [(r["epoch"], r["step"], r["lr"], r["skipped_steps"]) for r in rows] == [
        ("1", "6", "0.001", "0"), ("2", "7", "0.0005", "3")]
    # The halved learning rate is part of the run: saved, and kept when the run is resumed.
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]["state"]
    assert state["lr_scale"] == 0.5 and state["skipped_steps"] == 3
    quiet_train(cfg, tmp_path / "run", small_digits, log.append, faults=faults, resume=True,
                overrides={"epochs": 3})
    assert metrics_rows(tmp_path / "run")[-1]["lr"] == "0.0005"
    assert faults.snapshots[-1]["lr"] == pytest.approx(5e-4)


def test_faults_before_the_first_checkpoint_stop_the_run_with_one_line(tmp_path, small_digits):
    log = []
    with pytest.raises(TrainingError, match="2 non-finite steps in a row before the first checkpoint"):
        quiet_train(tiny_config(epochs=1, max_bad_steps=2), tmp_path / "run", small_digits, log.append,
                    faults=Recording(nan_loss=set(range(100))))
    assert sum("step skipped" in m for m in log) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_diverging_run_stops_the_command_in_one_line_with_exit_1(tmp_path, capsys):
    # a learning rate of 1e30 makes every step after the first non-finite
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "32",
                         "--lr", "1e30", "--set", "max_bad_steps=2", *TINY_CPU)
    assert code == 1
    assert "2 non-finite steps in a row before the first checkpoint" in one_line(err)
    assert out.count("step skipped") == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_same_seed_same_checkpoint_bit_for_bit(tmp_path, small_digits):
    for name in ("a", "b"):
        quiet_train(tiny_config(epochs=1), tmp_path / name, small_digits)
    a, meta_a = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert same(a, b) and meta_a["state"] == meta_b["state"]
    assert metrics_rows(tmp_path / "a") == metrics_rows(tmp_path / "b")


# ---------------------------------------------------------------- crashes at chosen moments


class Crash(BaseException):
    """Stands for a SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


def test_crash_between_last_and_best_checkpoint_loses_nothing(tmp_path, small_digits):
    run = tmp_path / "run"

    class CrashBeforeBest(Faults):
        def before_checkpoint(self, ctx, path):
            if path.name == "best.safetensors" and ctx.state.epoch == 2:
                raise Crash

    with pytest.raises(Crash):
        quiet_train(tiny_config(), run, small_digits, faults=CrashBeforeBest())
    quiet_train(tiny_config(), run, small_digits, resume=True)
    last, last_meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    best, best_meta = checkpoint.load(run / "checkpoints" / "best.safetensors")
    rows = metrics_rows(run)
    assert float(rows[1]["valid_bpd"]) < float(rows[0]["valid_bpd"])  # epoch 2 was the best
    assert best_meta["state"]["epoch"] == 2, "best.safetensors still holds epoch 1"
    assert same({k: v for k, v in best.items() if k.startswith("model.")},
                {k: v for k, v in last.items() if k.startswith("model.")})


def test_crash_while_metrics_are_rewritten_on_resume_loses_no_rows(tmp_path, monkeypatch, small_digits):
    run = tmp_path / "run"
    quiet_train(tiny_config(epochs=1), run, small_digits)
    before = metrics_rows(run)
    real = csv.DictWriter.writerows

    def writerows(self, rows):
        raise Crash

    monkeypatch.setattr(csv.DictWriter, "writerows", writerows)
    with pytest.raises(Crash):
        quiet_train(tiny_config(epochs=1), run, small_digits, resume=True, overrides={"epochs": 2})
    monkeypatch.setattr(csv.DictWriter, "writerows", real)
    assert metrics_rows(run) == before


def test_crash_while_the_run_directory_is_set_up_leaves_a_usable_directory(tmp_path, monkeypatch,
                                                                            small_digits):
    run = tmp_path / "run"
    real, calls = json.dumps, []

    def dumps(*args, **kwargs):  # the second JSON text of the run: its second description file
        calls.append(None)
        if len(calls) == 2:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(json, "dumps", dumps)
    with pytest.raises(Crash):
        quiet_train(tiny_config(epochs=1), run, small_digits)
    monkeypatch.setattr(json, "dumps", real)
    try:  # what a user would do: resume it, or else start it again
        quiet_train(tiny_config(epochs=1), run, small_digits, resume=True)
    except RunError:
        quiet_train(tiny_config(epochs=1), run, small_digits)
    assert len(metrics_rows(run)) == 1


# ============================================================================ kill and resume


class Training:
    """``realnvp train ARGV`` in a subprocess, its output in ``log``."""

    def __init__(self, argv, log: Path):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "realnvp", "train", *map(str, argv)],
                                         stdout=out, stderr=subprocess.STDOUT, env=ENV)

    def wait_for(self, ready) -> float:
        """Wait until ``ready()`` is true (or the process ended); the time it took."""
        t0 = time.monotonic()
        while not ready() and self.proc.poll() is None and time.monotonic() < t0 + 300:
            time.sleep(0.005)
        return time.monotonic() - t0

    def printed(self, text: str) -> bool:
        return text in self.log.read_text()

    def kill(self) -> int:
        """SIGKILL (if it still runs); the return code, −9 if it was killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=60)


@posix_only
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_numbers(tmp_path, reference_run):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.safetensors"
    # Killed at a random moment of epoch 2 (training, evaluation, metrics, checkpoint write) ...
    first = Training(["--epochs", REFERENCE_EPOCHS, "--out", run, *TINY_CPU], tmp_path / "1.log")
    try:
        first.wait_for(lambda: first.printed("digits:"))
        epoch = first.wait_for(last.exists)  # how long one epoch takes here
        time.sleep(rng.uniform(0.0, epoch))
    finally:
        assert first.kill() == -signal.SIGKILL, (seed, first.log.read_text())
    # ... then while resuming, at a random moment of the epochs that are left ...
    second = Training(["--resume", run, "--quiet", "--device", "cpu"], tmp_path / "2.log")
    try:
        second.wait_for(lambda: second.printed("digits:"))
        time.sleep(rng.uniform(0.0, epoch))
    finally:
        second.kill()
    assert "resuming" in second.log.read_text() and "after epoch 0" not in second.log.read_text()
    # ... and resumed to the end: the numbers of the run that was never interrupted.
    proc = run_cli_process("train", "--resume", run, "--quiet", "--device", "cpu")
    assert proc.returncode == 0, (seed, proc.stdout, proc.stderr)
    assert metrics_rows(run) == metrics_rows(reference_run), seed
    result = json.loads((run / "eval.json").read_text())
    assert result["bits_per_dim"] == json.loads((reference_run / "eval.json").read_text())["bits_per_dim"]
    # nothing but complete checkpoints and hidden leftovers of killed saves
    names = files(run / "checkpoints")
    assert {n for n in names if not n.startswith(".")} <= {
        "last.safetensors", "last.safetensors.prev", "best.safetensors", "best.safetensors.prev"}


def test_resume_from_a_corrupt_last_checkpoint_uses_prev_and_gives_the_same_numbers(tmp_path, reference_run):
    run = copy_run(reference_run, tmp_path / "run")
    (run / "eval.json").unlink()
    last = run / "checkpoints" / "last.safetensors"
    CORRUPTIONS["flipped-first-data-byte"](last)
    proc = run_cli_process("train", "--resume", run, "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "checksum mismatch" in proc.stdout and "using the previous checkpoint" in proc.stdout
    assert f"resuming {run} after epoch {REFERENCE_EPOCHS - 1}" in proc.stdout
    assert metrics_rows(run) == metrics_rows(reference_run)
    result = json.loads((run / "eval.json").read_text())
    assert result["bits_per_dim"] == json.loads((reference_run / "eval.json").read_text())["bits_per_dim"]
    # the corrupt file did not become the fallback of the new one
    assert checkpoint.load(last.with_suffix(".safetensors.prev"))[1]["state"]["epoch"] == REFERENCE_EPOCHS - 1

