"""The `realnvp` command end to end on tiny configurations of the embedded and toy data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import TINY, cli, metrics_rows
from realnvp.cli import main

TINY_16 = [*TINY, "--set", "num_samples=16"]  # :data:`helpers.TINY`, and a 4x4 grid of samples


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--epochs", "2", "--out", str(out), *TINY_16]) == 0
    return out


def test_train_writes_a_complete_run(digits_run):
    for name in ("config.json", "data.json", "metrics.csv", "eval.json", "samples.png",
                 "checkpoints/last.safetensors", "checkpoints/best.safetensors",
                 "samples/epoch_0001.png", "samples/epoch_0002.png"):
        assert (digits_run / name).is_file(), name
    result = json.loads((digits_run / "eval.json").read_text())
    assert result["num_examples"] == 300 and result["epochs"] == 2
    assert 0 < result["bits_per_dim"] < 10 and result["bits_per_dim_stderr"] > 0
    assert len(metrics_rows(digits_run)) == 2
    assert Image.open(digits_run / "samples.png").size[0] > 64


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path, digits_run):
    out = tmp_path / "resumed"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY_16]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert metrics_rows(out) == metrics_rows(digits_run)
    a = json.loads((out / "eval.json").read_text())
    b = json.loads((digits_run / "eval.json").read_text())
    assert a["bits_per_dim"] == b["bits_per_dim"]


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path, digits_run):
    other = tmp_path / "seed1"
    assert main(["train", "--epochs", "2", "--seed", "1", "--out", str(other), *TINY_16]) == 0
    assert metrics_rows(other) != metrics_rows(digits_run)


def test_eval_sample_interpolate_score_info(tmp_path, capsys, digits_run):
    code, out, _ = cli(capsys, "eval", digits_run, "--dequant-samples", "2", "--quiet",
                       "--json", tmp_path / "e.json")
    assert code == 0 and "bits/dim over 300 examples" in out
    assert json.loads((tmp_path / "e.json").read_text())["dequant_samples"] == 2

    code, out, _ = cli(capsys, "sample", digits_run, "-n", "9", "--temperature", "0.5",
                       "-o", tmp_path / "grid.png")
    assert code == 0 and Image.open(tmp_path / "grid.png").size[0] > 24
    code, _, _ = cli(capsys, "sample", digits_run, "-n", "5", "-o", tmp_path / "s.npy")
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (5, 1, 8, 8) and arr.dtype == np.uint8
    assert arr.max() <= 16  # the data's 17 levels, which score reads back
    code, out, _ = cli(capsys, "score", digits_run, tmp_path / "s.npy")
    assert code == 0 and len(out.splitlines()) == 6

    code, out, _ = cli(capsys, "interpolate", digits_run, "--steps", "4", "-o", tmp_path / "m.png")
    assert code == 0 and (tmp_path / "m.png").is_file()

    pic = tmp_path / "digit.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(pic)
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.uint8))
    code, out, _ = cli(capsys, "score", digits_run, pic, tmp_path / "x.npy")
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and len(rows) == 4 and all(float(r["bits_per_dim"]) > 0 for r in rows)

    code, out, _ = cli(capsys, "info", digits_run)
    assert code == 0 and "parameters" in out and "2 of 2" in out
    code, out, _ = cli(capsys, "info", digits_run, "--json")
    assert json.loads(out)["epochs_completed"] == 2


def test_toy_data_trains_and_plots(tmp_path, capsys):
    out = tmp_path / "moons"
    code, stdout, _ = cli(capsys, "train", "--data", "toy:moons", "--epochs", "1", "--batch-size",
                          "1024", "--out", out, "--set", "num_couplings=2", "--set", "hidden=16",
                          "--set", "num_samples=200", "--set", "toy_train_size=20000", "--quiet")
    assert code == 0 and "nats" in stdout
    assert (out / "samples.png").is_file()
    code, _, _ = cli(capsys, "sample", out, "-n", "100", "-o", tmp_path / "s.png")
    assert code == 0
    code, _, _ = cli(capsys, "sample", out, "-n", "10", "-o", tmp_path / "s.csv")
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (10, 2)
    code, _, err = cli(capsys, "interpolate", out, "-o", tmp_path / "m.png")
    assert code == 2 and "image model" in err


def test_plain_vector_architecture_trains_and_reloads(tmp_path, capsys):
    """``weight_norm=false`` and ``batch_norm=false``: the FrEIA/zuko-style architecture, saved,
    reloaded from the run's configuration and evaluated."""
    from realnvp.runs import load_run

    out = tmp_path / "plain"
    code, _, _ = cli(capsys, "train", "--data", "toy:8gaussians", "--epochs", "1", "--batch-size",
                     "512", "--out", out, "--set", "num_couplings=2", "--set", "hidden=16",
                     "--set", "weight_norm=false", "--set", "batch_norm=false",
                     "--set", "num_samples=100", "--set", "toy_train_size=20000", "--quiet")
    assert code == 0
    model = load_run(out).model
    names = [n for n, _ in model.named_parameters()]
    assert not any("weight_g" in n for n in names) and any(n.endswith(".weight") for n in names)
    code, stdout, _ = cli(capsys, "eval", out)
    assert code == 0 and "nats" in stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "nosuchdata"], "unknown data set"),
        (["train", "--set", "nosuchkey=1"], "unknown configuration key"),
        (["train", "--epochs", "0"], "epochs must be >= 1"),
        (["train", "--bogus-flag"], "unrecognized arguments"),
        (["train", "--data", "mnist", "--data-dir", "/nonexistent/mnist"], "--download"),
        (["train", "--config", "/nonexistent.json"], "config file not found"),
        (["eval", "/nonexistent/run"], "run directory not found"),
        (["frobnicate"], "invalid choice"),
        ([], "choose a command"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed run left a folder behind"


def test_run_errors(tmp_path, capsys, digits_run):
    code, _, err = cli(capsys, "eval", tmp_path)
    assert code == 2 and "is not a realnvp run" in err
    code, _, err = cli(capsys, "train", "--out", digits_run, "--epochs", "1")
    assert code == 2 and "already holds a run" in err
    code, _, err = cli(capsys, "sample", digits_run, "-o", tmp_path / "missing" / "x.png")
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "score", digits_run, tmp_path / "nothing.png")
    assert code == 2 and "input not found" in err
    big = tmp_path / "big.png"
    Image.new("L", (28, 28)).save(big)
    code, _, err = cli(capsys, "score", digits_run, big)
    assert code == 2 and "expects 8x8" in err

    # a checkpoint from an incompatible model
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("data.json",):
        (clone / name).write_text((digits_run / name).read_text())
    cfg = json.loads((digits_run / "config.json").read_text())
    cfg["hidden_channels"] = 8
    (clone / "config.json").write_text(json.dumps(cfg))
    (clone / "checkpoints").mkdir()
    (clone / "checkpoints" / "last.safetensors").write_bytes(
        (digits_run / "checkpoints" / "last.safetensors").read_bytes())
    code, _, err = cli(capsys, "eval", clone)
    assert code == 2 and "does not fit the model" in err
    assert len(err.strip().splitlines()) == 1


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "realnvp", "--version"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "realnvp" in proc.stdout


def test_run_files_share_one_mode_and_outputs_need_a_known_format(tmp_path, capsys):
    import stat

    run = tmp_path / "run"
    code, out, _ = cli(capsys, "train", "--out", run, "--epochs", "1", *TINY, "--device", "cpu",
                       "--set", "sample_every=0")
    assert code == 0
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [*run.glob("*.json"), run / "metrics.csv",
                                                      *run.glob("checkpoints/*.safetensors")]}
    assert len(modes) == 1
    code, _, err = cli(capsys, "sample", str(run), "-o", tmp_path / "grid.txt")
    assert code == 2 and "choose the format by its extension" in err
    assert not (tmp_path / "grid.txt").exists()
    code, _, err = cli(capsys, "train", "--resume", str(run), "--config", "cifar10")
    assert code == 2 and "--config cannot change it" in err
    code, _, err = cli(capsys, "eval", str(run), "--json", tmp_path / "missing" / "e.json")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "-n", "100000000000", "-o", "x.npy"], "more than 1,000,000 samples"),
    (["sample", "RUN", "-n", "5000", "-o", "x.png"], "too large"),
    (["interpolate", "RUN", "--steps", "100000"], "would decode 10,000,000,000 images"),
])
def test_outputs_are_bounded_before_anything_runs(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "missing-run") if a == "RUN" else a for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err


def test_every_configuration_key_is_listed_with_its_default_and_meaning(capsys):
    import dataclasses

    from realnvp.config import HELP, Config

    assert set(HELP) == {f.name for f in dataclasses.fields(Config)}
    with pytest.raises(SystemExit) as stop:
        main(["train", "--list-keys"])
    assert stop.value.code == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [f.name for f in dataclasses.fields(Config)]
    assert any(line.startswith("grad_clip") and "100.0" in line for line in listed)


def test_export_writes_density_and_sampler_equal_to_the_eager_model(tmp_path, capsys, digits_run):
    import json

    import torch

    from realnvp.runs import load_run

    code, out, err = cli(capsys, "export", digits_run, "-o", tmp_path / "served")
    assert code == 0, err
    info = json.loads((tmp_path / "served" / "export.json").read_text())
    # log-densities of ~100 nats in float32: 1e-4 absolute is round-off (~1e-6 relative)
    assert info["max_abs_difference"]["density"] <= 1e-4 and info["event_shape"] == [1, 8, 8]
    model = load_run(digits_run, "best").model
    density = torch.export.load(str(tmp_path / "served" / "density.pt2")).module()
    sampler = torch.export.load(str(tmp_path / "served" / "sample.pt2")).module()
    y = (torch.randint(0, 17, (9, 1, 8, 8)).float() + 0.5) / 17  # another batch size than exported
    torch.testing.assert_close(density(y), model.log_prob(y), rtol=1e-5, atol=1e-5)
    z = torch.randn(3, 64)
    torch.testing.assert_close(sampler(z), model.decode(z), rtol=1e-5, atol=1e-5)
    code, _, err = cli(capsys, "export", digits_run, "-o", tmp_path / "served" / "export.json")
    assert code == 2 and "is a file" in err


def test_an_export_that_fails_leaves_no_new_folder(tmp_path, capsys, digits_run, monkeypatch):
    import realnvp.export
    from realnvp.export import ExportError

    def refuse(*args):
        raise ExportError("torch.export cannot take this model's density path: a stand-in")

    monkeypatch.setattr(realnvp.export, "export", refuse)
    code, _, err = cli(capsys, "export", digits_run, "-o", tmp_path / "new")
    assert code == 2 and "a stand-in" in err and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    code, _, _ = cli(capsys, "export", digits_run, "-o", tmp_path / "old")
    assert code == 2 and (tmp_path / "old").is_dir()  # a folder that was there stays


def test_debug_is_accepted_after_the_command_too(capsys):
    from realnvp.data import DataError

    with pytest.raises(DataError, match="unknown data set 'mnsit'"):
        main(["train", "--debug", "--data", "mnsit"])
