"""Checkpoint files: what is saved is what loads, bit for bit, and nothing else ever does.

Save/load round trips (the previous file kept as ``.prev``, every header length, non-finite values
refused), damaged files of every kind refused in one line with the previous checkpoint used
instead (and never pushed out by a corrupt one), stale temporary files of dead processes removed,
nothing unpickled anywhere a checkpoint or run is read (a pickle disguised as a checkpoint is
refused without being run), and SIGKILL at every moment of a save never leaving an unreadable
checkpoint behind.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import CORRUPTIONS, ENV, Exploit, files, posix_only, same, some_tensors
from realnvp import checkpoint
from realnvp.checkpoint import CheckpointError
from realnvp.runs import load_run


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
    # and no other module that reads runs does either (only data/ reads pickles: the CIFAR batches,
    # through its restricted unpickler, tested in test_data.py)
    package = Path(checkpoint.__file__).parent
    modules = [p for p in package.rglob("*.py") if "data" not in p.relative_to(package).parts]
    assert {"runs.py", "evaluate.py", "score.py", "trainer.py", "checkpoints.py"} <= {p.name for p in modules}
    for module in modules:
        source = module.read_text()
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
                checkpoint.fsync_dir = kill_me
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
