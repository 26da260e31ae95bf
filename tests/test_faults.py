"""Nothing lost, nothing let in: training faults, kills at any moment, corrupt and malicious
checkpoints and data, bad input at the API and the command line.

Training runs here are tiny (4 hidden channels, one residual block) and, in process, use a subset
of the digits (192 train / 64 test examples, 6 steps an epoch); the run that is killed with
SIGKILL uses the whole digits set in a subprocess.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import realnvp.train as train_mod
from realnvp import RealNVP, VectorRealNVP, checkpoint
from realnvp.checkpoint import CheckpointError
from realnvp.cli import main
from realnvp.config import Config
from realnvp.data import DataInfo
from realnvp.evaluate import evaluate, per_example_bits_per_dim
from realnvp.runs import RunError, load_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI_TINY = ["--quiet", "--device", "cpu", "--set", "hidden_channels=4", "--set", "num_blocks=1",
            "--set", "eval_dequant_samples=1", "--set", "num_samples=4", "--set", "sample_every=0"]
EPOCHS = 3
posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL, fork and `touch` are POSIX")



def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


class Exploit:
    """Unpickling this object creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ============================================================================ checkpoint files


def some_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.w": torch.randn(5, 3, generator=g),
        "model.h": torch.randn(4, generator=g).to(torch.bfloat16),
        "model.d": torch.randn(2, 2, generator=g).double(),
        "model.count": torch.tensor(7),
        "model.flag": torch.tensor(True),
        "optim.0.step": torch.tensor(float(seed)),
        "rng.torch": torch.get_rng_state(),
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_load_round_trip_keeps_previous_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ckpt" / "last.safetensors"
    checkpoint.save(path, some_tensors(0), {"epoch": 1, "best": float("inf")})
    assert files(path.parent) == ["last.safetensors"]
    checkpoint.save(path, some_tensors(1), {"epoch": 2, "nested": {"a": [1, 2.5, None]}})
    assert files(path.parent) == ["last.safetensors", "last.safetensors.prev"]
    tensors, meta = checkpoint.load(path)
    assert same(tensors, some_tensors(1)) and meta == {"epoch": 2, "nested": {"a": [1, 2.5, None]}}
    tensors, meta = checkpoint.load(path.with_suffix(".safetensors.prev"))
    assert same(tensors, some_tensors(0)) and meta == {"epoch": 1, "best": float("inf")}


def test_every_header_length_loads(tmp_path):
    # A safetensors file starts with its header length (padded to a multiple of 8), whose first
    # byte can be that of a pickle (0x80) or a zip archive (b"P"): none may be refused for that.
    path = tmp_path / "last.safetensors"
    seen = set()
    for pad in range(0, 264, 8):
        checkpoint.save(path, {"w": torch.zeros(1)}, {"pad": "x" * pad}, keep_previous=False)
        seen.add(path.read_bytes()[0])
        assert checkpoint.load(path)[1] == {"pad": "x" * pad}
    assert seen == set(range(0, 256, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_save_refuses_non_finite_values_and_keeps_the_old_file(tmp_path, dtype, value):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, some_tensors(0), {"epoch": 1})
    before = path.read_bytes()
    bad = some_tensors(1)
    bad["optim.0.exp_avg"] = torch.tensor([0.0, value, 1.0], dtype=dtype)
    with pytest.raises(CheckpointError, match=r"non-finite values in optim\.0\.exp_avg"):
        checkpoint.save(path, bad, {"epoch": 2})
    assert path.read_bytes() == before and files(tmp_path) == ["last.safetensors"]


def header_of(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def rewrite_header(path: Path, change) -> None:
    """Edit the JSON header of a safetensors file (the data offsets stay valid)."""
    raw = path.read_bytes()
    n, header = header_of(path)
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _flip(offset_of):
    def corrupt(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        i = offset_of(len(raw), header_of(path)[0])
        raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
    return corrupt


def _truncate(length_of):
    def corrupt(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[:length_of(len(raw), header_of(path)[0])])
    return corrupt


def _set_meta(header):
    header["__metadata__"]["meta"] = header["__metadata__"]["meta"].replace('"epoch"', '"epoxh"')


CORRUPTIONS = {
    "empty": _truncate(lambda n, h: 0),
    "truncated-in-length": _truncate(lambda n, h: 5),
    "truncated-in-header": _truncate(lambda n, h: 8 + h // 2),
    "truncated-in-data": _truncate(lambda n, h: (8 + h + n) // 2),
    "last-byte-missing": _truncate(lambda n, h: n - 1),
    "flipped-length": _flip(lambda n, h: 1),
    "flipped-header": _flip(lambda n, h: 8 + h // 3),
    "flipped-first-data-byte": _flip(lambda n, h: 8 + h),
    "flipped-last-byte": _flip(lambda n, h: n - 1),
    "garbage-appended": lambda p: p.write_bytes(p.read_bytes() + b"\0junk"),
    "metadata-edited": lambda p: rewrite_header(p, _set_meta),
    "digest-removed": lambda p: rewrite_header(p, lambda h: h["__metadata__"].pop("sha256")),
    "other-format": lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(format="x")),
    "not-a-checkpoint": lambda p: p.write_text("hello, world\n" * 40),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused_in_one_line_and_prev_is_used(tmp_path, name):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, some_tensors(1), {"epoch": 1})
    checkpoint.save(path, some_tensors(2), {"epoch": 2})
    CORRUPTIONS[name](path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert "\n" not in message and "last.safetensors" in message
    warnings = []
    tensors, meta, source = checkpoint.load_with_fallback(path, warn=warnings.append)
    assert source.name == "last.safetensors.prev" and meta == {"epoch": 1}
    assert same(tensors, some_tensors(1))
    assert len(warnings) == 1 and "using the previous checkpoint" in warnings[0]
    # Both unusable: one error naming both.
    CORRUPTIONS[name](source)
    with pytest.raises(CheckpointError, match="previous checkpoint is unusable too") as info:
        checkpoint.load_with_fallback(path, warn=warnings.append)
    assert "\n" not in str(info.value)


def test_a_missing_latest_checkpoint_falls_back_to_prev(tmp_path):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, some_tensors(1), {"epoch": 1})
    checkpoint.save(path, some_tensors(2), {"epoch": 2})
    path.unlink()
    warnings = []
    _, meta, source = checkpoint.load_with_fallback(path, warn=warnings.append)
    assert meta == {"epoch": 1} and "not found" in warnings[0]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nothing.safetensors")


def test_a_corrupt_checkpoint_never_pushes_out_the_good_previous_one(tmp_path):
    path = tmp_path / "last.safetensors"
    prev = path.with_suffix(".safetensors.prev")
    checkpoint.save(path, some_tensors(1), {"epoch": 1})
    checkpoint.save(path, some_tensors(2), {"epoch": 2})
    CORRUPTIONS["flipped-first-data-byte"](path)
    checkpoint._verified.clear()  # as in a new process that resumes
    checkpoint.save(path, some_tensors(3), {"epoch": 3})
    assert checkpoint.load(path)[1] == {"epoch": 3}
    assert checkpoint.load(prev)[1] == {"epoch": 1}  # not the corrupt epoch-2 file
    checkpoint.save(path, some_tensors(4), {"epoch": 4})
    assert checkpoint.load(prev)[1] == {"epoch": 3}


def test_stale_temp_files_of_dead_processes_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "last.safetensors"
    host, dead = checkpoint._host(), 2**30  # above any pid_max: no such process
    stale = tmp_path / f".last.safetensors.{host}.{dead}.abc123.tmp"  # a staging directory
    stale_file = tmp_path / f".last.safetensors.{host}.{dead}.def456.tmp"
    foreign = tmp_path / f".last.safetensors.otherhost.{dead}.abc123.tmp"  # maybe still being written
    other = tmp_path / f".best.safetensors.{host}.{dead}.abc123.tmp"  # not this checkpoint's
    stale.mkdir()
    (stale / "checkpoint.partial").write_bytes(b"partial")
    (stale / ".tmpAbC123").write_bytes(b"safetensors' own temporary file")
    for p in (stale_file, foreign, other):
        p.write_bytes(b"partial")
    checkpoint.save(path, some_tensors(), {})
    assert not stale.exists() and not stale_file.exists() and foreign.exists() and other.exists()
    assert files(tmp_path) == sorted([foreign.name, other.name, "last.safetensors"])


# ---------------------------------------------------------------------------- nothing unpickled


def test_checkpoint_module_never_unpickles():
    tree = ast.parse(Path(checkpoint.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not {c for c in calls if c.endswith(("torch.load", "torch.save", "pickle.load",
                                                "pickle.loads", "Unpickler"))}
    # and no other module that reads runs does either
    for module in ("runs.py", "train.py", "cli.py", "evaluate.py", "score.py"):
        source = (Path(checkpoint.__file__).parent / module).read_text()
        assert "torch.load" not in source and "import pickle" not in source, module


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    class Refusing(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refusing)
    monkeypatch.setattr(torch, "load", refuse)


def test_checkpoints_load_without_any_unpickling(tmp_path, no_unpickling):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, some_tensors(), {"epoch": 1})
    assert same(checkpoint.load(path)[0], some_tensors())


def test_a_run_loads_without_any_unpickling(reference_run, no_unpickling):
    run = load_run(reference_run, which="best")
    assert run.meta["state"]["epoch"] >= 1 and not run.model.training


@posix_only
@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle"])
def test_a_pickle_disguised_as_a_checkpoint_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.safetensors"
    payload = {"model.w": torch.zeros(2), "evil": Exploit(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=writer == "torch.save")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint; refusing") as info:
        checkpoint.load(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # Sanity check of the test itself: unpickling the file would have run the command.
    if writer == "pickle":
        pickle.loads(path.read_bytes())
    else:  # (torch.load itself reads files named *.safetensors with safetensors)
        torch.load(shutil.copy(path, tmp_path / "same.pt"), weights_only=False)
    assert marker.exists()


# ============================================================================ kills during a save

SAVER = textwrap.dedent("""
    import json, os, random, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from realnvp import checkpoint

    path, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    folder = os.path.dirname(path)

    def tensors(i):
        return {"w": torch.full((1 << 19,), float(i)), "i": torch.tensor([i])}

    def kill_me(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def half_written(tensors, filename, metadata=None):  # the write itself is cut short
        checkpoint.safetensors_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        kill_me()

    # Crash points, in the order a save reaches them; "random" kills a saving loop at random.
    POINTS = ["in-write", "before-rotate", "in-rotate", "before-rename", "after-rename"]
    checkpoint.safetensors_save_file = checkpoint.save_file
    report, counter = [], 0
    for r in range(rounds):
        point = POINTS[r] if r < len(POINTS) else "random"
        counter += 1000
        pid = os.fork()
        if pid == 0:
            if point == "in-write":
                checkpoint.save_file = half_written
            elif point == "before-rotate":
                checkpoint._keep_previous = kill_me
            elif point == "in-rotate":
                real_replace = os.replace
                def replace(src, dst):
                    if str(dst).endswith(".prev"):
                        kill_me()
                    real_replace(src, dst)
                os.replace = replace
            elif point == "before-rename":
                real_replace = os.replace
                def replace(src, dst):
                    if str(dst) == path:
                        kill_me()
                    real_replace(src, dst)
                os.replace = replace
            elif point == "after-rename":
                checkpoint._fsync_dir = kill_me
            i = counter
            while True:
                i += 1
                checkpoint.save(path, tensors(i), {"i": i})
        entry, reaped = {"point": point}, False
        if point == "random":
            time.sleep(rng.uniform(0.0, 0.4))
        else:  # the child kills itself at its crash point
            deadline = time.monotonic() + 30
            while not reaped and time.monotonic() < deadline:
                reaped = os.waitpid(pid, os.WNOHANG) != (0, 0)
                time.sleep(0.005)
            entry["reached"] = reaped
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        entry["files"] = sorted(os.listdir(folder))
        for name, p in (("last", path), ("prev", path + ".prev")):
            try:
                t, meta = checkpoint.load(p)
                entry[name] = meta["i"]
                entry[name + "_consistent"] = bool((t["w"] == meta["i"]).all()) and int(t["i"]) == meta["i"]
            except Exception as e:
                entry[name + "_error"] = str(e)
        report.append(entry)
        if r == 0:  # a good checkpoint to start from, for every later round
            checkpoint.save(path, tensors(1), {"i": 1})
            checkpoint.save(path, tensors(2), {"i": 2})
    print(json.dumps(report))
""")


@posix_only
def test_sigkill_during_checkpoint_save_never_leaves_an_unreadable_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    proc = subprocess.run([sys.executable, "-c", SAVER, str(path), "12", "0"], capture_output=True,
                          text=True, env=ENV, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [e["point"] for e in report][:5] == ["in-write", "before-rotate", "in-rotate",
                                                "before-rename", "after-rename"]
    for k, entry in enumerate(report):
        assert entry.get("reached", True), entry  # every crash point was hit
        if k == 0:  # killed during the very first save: nothing may be there, but no partial file
            assert entry.get("last_error", "").startswith("checkpoint not found") or entry["last_consistent"]
        else:
            # The latest checkpoint is always there, complete and self-consistent ...
            assert entry.get("last_consistent"), entry
            # ... and the previous one (when there is one) too, one save older.
            if "prev" in entry or "prev_error" in entry:
                assert entry.get("prev_consistent") and entry["prev"] <= entry["last"], entry
        # Nothing else looks like a checkpoint: leftovers are hidden .tmp files, at most one per
        # killed save (each save clears those of dead processes).
        visible = [f for f in entry["files"] if not f.startswith(".")]
        assert set(visible) <= {"last.safetensors", "last.safetensors.prev"}, entry
        leftovers = [f for f in entry["files"] if f.startswith(".")]
        assert all(f.endswith(".tmp") for f in leftovers) and len(leftovers) <= 2, entry


# ============================================================================ training faults


@pytest.fixture
def small_digits(monkeypatch):
    """The digits data set cut to 192 training and 64 test examples (6 steps of 32 an epoch)."""
    real = train_mod.load_dataset

    def load(name, split="train", *args, **kwargs):
        dataset, info = real(name, split, *args, **kwargs)
        return Subset(dataset, range(192 if split == "train" else 64)), info

    monkeypatch.setattr(train_mod, "load_dataset", load)


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


class Faults:
    """Wraps ``realnvp.train._train_loss``: a snapshot of the model and optimizer at every call
    (before the step), and a NaN loss or a NaN gradient on the chosen calls."""

    def __init__(self, monkeypatch, nan_loss=(), nan_grad=()):
        self.nan_loss, self.nan_grad = set(nan_loss), set(nan_grad)
        self.snapshots, self.optimizers = [], []
        real_loss, real_adam, faults = train_mod._train_loss, torch.optim.Adam, self

        class RecordingAdam(real_adam):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                faults.optimizers.append(self)

        def loss(model, *args, **kwargs):
            n = len(self.snapshots)
            self.snapshots.append(snapshot(model, self.optimizers[-1]))
            value, bpd = real_loss(model, *args, **kwargs)  # moves batch-norm statistics
            if n in self.nan_loss:
                value = value * float("nan")
            if n in self.nan_grad:
                value = PoisonGradient.apply(value)
            return value, bpd

        monkeypatch.setattr(train_mod, "_train_loss", loss)
        monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)


def test_a_non_finite_step_is_skipped_without_a_trace(tmp_path, monkeypatch, small_digits):
    faults = Faults(monkeypatch, nan_loss={2}, nan_grad={4, 9})
    log = []
    train_mod.train(tiny_config(), tmp_path / "run", quiet=True, log=log.append)
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
        tmp_path, monkeypatch, small_digits):
    # Epoch 1: calls 0-5. Epoch 2: two good steps, then three bad ones in a row (max_bad_steps=3).
    faults = Faults(monkeypatch, nan_loss={8, 10}, nan_grad={9})
    log = []
    cfg = tiny_config(max_bad_steps=3)
    train_mod.train(cfg, tmp_path / "run", quiet=True, log=log.append)
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
    train_mod.train(cfg, tmp_path / "run", resume=True, overrides={"epochs": 3}, quiet=True,
                    log=log.append)
    assert metrics_rows(tmp_path / "run")[-1]["lr"] == "0.0005"
    assert faults.snapshots[-1]["lr"] == pytest.approx(5e-4)


def test_faults_before_the_first_checkpoint_stop_the_run_with_one_line(tmp_path, monkeypatch, capsys,
                                                                        small_digits):
    Faults(monkeypatch, nan_loss=set(range(100)))
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "32",
                         "--set", "max_bad_steps=2", *CLI_TINY)
    assert code == 1
    assert "2 non-finite steps in a row before the first checkpoint" in one_line(err)
    assert out.count("step skipped") == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_same_seed_same_checkpoint_bit_for_bit(tmp_path, small_digits):
    for name in ("a", "b"):
        train_mod.train(tiny_config(epochs=1), tmp_path / name, quiet=True, log=lambda *a: None)
    a, meta_a = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert same(a, b) and meta_a["state"] == meta_b["state"]
    assert metrics_rows(tmp_path / "a") == metrics_rows(tmp_path / "b")


# ---------------------------------------------------------------- crashes at chosen moments


class Crash(BaseException):
    """Stands for a SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


def test_crash_between_last_and_best_checkpoint_loses_nothing(tmp_path, monkeypatch, small_digits):
    run = tmp_path / "run"
    real_save = checkpoint.save

    def save(path, tensors, meta, **kwargs):
        if Path(path).name == "best.safetensors" and meta["state"]["epoch"] == 2:
            raise Crash
        real_save(path, tensors, meta, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(Crash):
        train_mod.train(tiny_config(), run, quiet=True, log=lambda *a: None)
    monkeypatch.setattr(checkpoint, "save", real_save)
    train_mod.train(tiny_config(), run, resume=True, quiet=True, log=lambda *a: None)
    last, last_meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    best, best_meta = checkpoint.load(run / "checkpoints" / "best.safetensors")
    rows = metrics_rows(run)
    assert float(rows[1]["test_bpd"]) < float(rows[0]["test_bpd"])  # epoch 2 was the best
    assert best_meta["state"]["epoch"] == 2, "best.safetensors still holds epoch 1"
    assert same({k: v for k, v in best.items() if k.startswith("model.")},
                {k: v for k, v in last.items() if k.startswith("model.")})


def test_crash_while_metrics_are_rewritten_on_resume_loses_no_rows(tmp_path, monkeypatch, small_digits):
    run = tmp_path / "run"
    train_mod.train(tiny_config(epochs=1), run, quiet=True, log=lambda *a: None)
    before = metrics_rows(run)
    real = csv.DictWriter.writerows

    def writerows(self, rows):
        raise Crash

    monkeypatch.setattr(csv.DictWriter, "writerows", writerows)
    with pytest.raises(Crash):
        train_mod.train(tiny_config(epochs=1), run, resume=True, overrides={"epochs": 2}, quiet=True,
                        log=lambda *a: None)
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
        train_mod.train(tiny_config(epochs=1), run, quiet=True, log=lambda *a: None)
    monkeypatch.setattr(json, "dumps", real)
    try:  # what a user would do: resume it, or else start it again
        train_mod.train(tiny_config(epochs=1), run, resume=True, quiet=True, log=lambda *a: None)
    except RunError:
        train_mod.train(tiny_config(epochs=1), run, quiet=True, log=lambda *a: None)
    assert len(metrics_rows(run)) == 1


# ============================================================================ kill and resume


def run_cli_process(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "realnvp", *map(str, argv)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of the whole digits set (subprocess, one thread)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli_process("train", "--epochs", EPOCHS, "--out", out, *CLI_TINY)
    assert proc.returncode == 0, proc.stderr
    return out


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
    first = Training(["--epochs", EPOCHS, "--out", run, *CLI_TINY], tmp_path / "1.log")
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


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tensorboard"))
    return dst


def test_resume_from_a_corrupt_last_checkpoint_uses_prev_and_gives_the_same_numbers(tmp_path, reference_run):
    run = copy_run(reference_run, tmp_path / "run")
    (run / "eval.json").unlink()
    last = run / "checkpoints" / "last.safetensors"
    CORRUPTIONS["flipped-first-data-byte"](last)
    proc = run_cli_process("train", "--resume", run, "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "checksum mismatch" in proc.stdout and "using the previous checkpoint" in proc.stdout
    assert f"resuming {run} after epoch {EPOCHS - 1}" in proc.stdout
    assert metrics_rows(run) == metrics_rows(reference_run)
    result = json.loads((run / "eval.json").read_text())
    assert result["bits_per_dim"] == json.loads((reference_run / "eval.json").read_text())["bits_per_dim"]
    # the corrupt file did not become the fallback of the new one
    assert checkpoint.load(last.with_suffix(".safetensors.prev"))[1]["state"]["epoch"] == EPOCHS - 1


# ============================================================================ eval of a damaged run


@pytest.mark.parametrize("damage", ["truncated-in-data", "flipped-header", "pickle"])
def test_eval_survives_a_damaged_latest_checkpoint(tmp_path, capsys, reference_run, damage):
    run = copy_run(reference_run, tmp_path / "run")
    last = run / "checkpoints" / "last.safetensors"
    prev = last.with_suffix(".safetensors.prev")
    marker = tmp_path / "pwned"

    def spoil(path):
        if damage == "pickle":
            torch.save({"model.w": torch.zeros(1), "x": Exploit(marker)}, path)
        else:
            CORRUPTIONS[damage](path)

    spoil(last)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(last)
    assert "\n" not in str(info.value)
    code, out, err = cli(capsys, "eval", run, "--quiet", "--dequant-samples", "1")
    assert code == 0 and "bits/dim over 300 examples" in out
    assert "using the previous checkpoint last.safetensors.prev" in one_line(err)
    spoil(prev)
    code, out, err = cli(capsys, "eval", run, "--quiet")
    assert code == 2 and out == ""
    line = one_line(err)
    assert "last.safetensors" in line and "previous checkpoint is unusable too" in line
    if damage == "pickle":
        assert "refusing" in line
    assert not marker.exists()


# ============================================================================ evaluation modes


def test_eval_mode_results_do_not_depend_on_the_batch_size(tmp_path, capsys, reference_run):
    run = load_run(reference_run, which="last")
    x = torch.stack(_digits_test()[:40])
    torch.manual_seed(5)
    whole = per_example_bits_per_dim(run.model, x, run.info, dequant_samples=1)
    torch.manual_seed(5)  # the same noise, drawn one example at a time
    single = torch.cat([per_example_bits_per_dim(run.model, x[i:i + 1], run.info, 1) for i in range(40)])
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-6)
    results = {}
    for batch in (1, 7, 256):
        code, _, _ = cli(capsys, "eval", reference_run, "--quiet", "--batch-size", batch,
                         "--dequant-samples", "1", "--seed", "3", "--json", tmp_path / f"{batch}.json")
        assert code == 0
        results[batch] = json.loads((tmp_path / f"{batch}.json").read_text())["bits_per_dim"]
    assert results[1] == pytest.approx(results[256], rel=1e-6, abs=1e-6)
    assert results[7] == pytest.approx(results[256], rel=1e-6, abs=1e-6)


def _digits_test():
    from realnvp.data import load_dataset

    dataset, _ = load_dataset("digits", "test")
    return [dataset[i] for i in range(len(dataset))]


def test_evaluate_refuses_an_empty_data_set():
    model = RealNVP((1, 4, 4), num_scales=1, hidden_channels=2, num_blocks=1)
    info = DataInfo("t", "image", (1, 4, 4), 17)
    with pytest.raises(ValueError, match="empty data set"):
        evaluate(model, TensorDataset(torch.zeros(0, 1, 4, 4)), info)


# ============================================================================ bad input, API level

IMAGE = RealNVP((1, 4, 4), num_scales=1, hidden_channels=2, num_blocks=1)
VECTOR = VectorRealNVP(3, num_couplings=2, hidden=4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: IMAGE.log_prob(torch.rand(2, 1, 4, 4, device="meta")),
         "input is on meta but the model is on cpu"),
        (lambda: IMAGE.log_prob(torch.full((2, 1, 4, 4), math.inf)), "NaN or infinite"),
        (lambda: IMAGE.log_prob(torch.full((2, 1, 4, 4), -math.inf)), "NaN or infinite"),
        (lambda: IMAGE.log_prob(torch.full((2, 1, 4, 4), -0.5)), r"must lie in \[-0.05556, 1.056\]"),
        (lambda: IMAGE.decode(torch.full((2, 16), math.nan)), "latent contains NaN or infinite"),
        (lambda: IMAGE.decode(torch.full((2, 16), math.inf)), "latent contains NaN or infinite"),
        (lambda: IMAGE.decode([[0.0] * 16]), "expected a torch.Tensor latent, got list"),
        (lambda: IMAGE.decode(torch.zeros(2, 15)), r"latent of shape \(B, 16\), got \(2, 15\)"),
        (lambda: IMAGE.sample(2, temperature=math.nan), "temperature must be a finite number >= 0"),
        (lambda: IMAGE.sample(2, temperature=math.inf), "temperature must be a finite number >= 0"),
        (lambda: VECTOR.log_prob(torch.tensor([[0.0, math.nan, 1.0]])), "NaN or infinite"),
        (lambda: VECTOR.log_prob(torch.zeros(0, 3)), "empty batch"),
        (lambda: VECTOR.log_prob(torch.zeros(2, 4)), r"shape \(B, 3\), got \(2, 4\)"),
        (lambda: VECTOR.log_prob(torch.zeros(2, 3, dtype=torch.int64)), "floating-point"),
    ],
)
def test_flow_api_refuses_bad_input_saying_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ============================================================================ bad data, CLI level


def cifar_folder(root: Path, poisoned: str | None = None, marker: Path | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        if name == poisoned:
            batch[b"labels"] = [Exploit(marker)]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@posix_only
def test_train_on_a_malicious_cifar_batch_stops_in_one_line_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    data = cifar_folder(tmp_path / "cifar", poisoned="data_batch_2", marker=marker)
    code, out, err = cli(capsys, "train", "--data", "cifar10", "--data-dir", data, "--epochs", "1",
                         "--out", tmp_path / "run", "--quiet")
    assert code == 2
    line = one_line(err)
    assert "data_batch_2" in line and "refusing to unpickle" in line
    assert not marker.exists()
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    data = rng.normal(size=(120, 3)) * [1.0, 2.0, 0.5]
    np.savetxt(root / "train.csv", data, delimiter=",", header="a,b,c", comments="")
    out = root / "run"
    code = main(["train", "--data", "tabular", "--data-dir", str(root / "train.csv"), "--epochs", "1",
                 "--batch-size", "16", "--out", str(out), "--set", "num_couplings=2", "--set", "hidden=8",
                 "--quiet", "--device", "cpu"])
    assert code == 0
    return out


def test_score_refuses_a_csv_with_nan_in_one_line(tmp_path, capsys, tabular_run):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("0.1,0.2,0.3\n1,2,3\n")
    bad.write_text("0.1,0.2,0.3\n1,nan,3\n")
    code, out, _ = cli(capsys, "score", tabular_run, good)
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, out, err = cli(capsys, "score", tabular_run, bad)
    assert code == 2 and out == ""
    assert "bad.csv: row 1, column 1 is not a finite number" in one_line(err)


def test_train_on_a_tabular_file_with_nan_stops_in_one_line(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(30)) + "3,nan\n")
    code, _, err = cli(capsys, "train", "--data", "tabular", "--data-dir", path, "--out", tmp_path / "run",
                       "--quiet")
    assert code == 2 and "t.csv: line 32, column 2: value nan is not finite" in one_line(err)


def test_train_with_a_batch_larger_than_the_data_stops_in_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--batch-size", "5000", "--out", tmp_path / "run", *CLI_TINY)
    assert code == 2 and "fewer than one batch" in one_line(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "{run}", "--batch-size", "0"], "--batch-size"),
        (["eval", "{run}", "--dequant-samples", "0"], "--dequant-samples"),
        (["score", "{run}", "{npy}", "--batch-size", "0"], "--batch-size"),
        (["score", "{run}", "{npy}", "--dequant-samples", "-1"], "--dequant-samples"),
        (["interpolate", "{run}", "--steps", "0", "-o", "{png}"], "--steps"),
        (["sample", "{run}", "--temperature", "nan", "-o", "{png}"], "--temperature"),
        (["sample", "{run}", "--temperature", "inf", "-o", "{png}"], "--temperature"),
    ],
)
def test_cli_refuses_zero_counts_and_non_finite_temperatures(tmp_path, capsys, reference_run, argv,
                                                             message):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), dtype=np.uint8))
    names = {"run": reference_run, "npy": tmp_path / "x.npy", "png": tmp_path / "out.png"}
    try:
        code, out, err = cli(capsys, *[a.format(**names) for a in argv])
    except Exception as e:  # a traceback at the command line
        pytest.fail(f"{type(e).__name__}: {e}")
    assert code == 2 and message in one_line(err), (code, out, err)
