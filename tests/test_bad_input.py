"""Bad input is refused in one line, saying what was expected, and nothing harmful runs.

The Flow API given tensors on the wrong device, non-finite or out-of-range values, wrong shapes
and dtypes, or non-finite temperatures; the command line given a malicious CIFAR batch, NaN in a
CSV to score or a tabular file to train on, a batch larger than the data, zero counts or
non-finite temperatures; evaluation of an empty data set; and ``realnvp eval`` of a run whose
latest checkpoint is damaged (the previous one is used; with both damaged, one line naming both).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from helpers import CORRUPTIONS, TINY_CPU, Exploit, cli, copy_run, one_line, posix_only
from realnvp import RealNVP, VectorRealNVP, checkpoint
from realnvp.checkpoint import CheckpointError
from realnvp.cli import main
from realnvp.data import DataInfo
from realnvp.evaluate import evaluate

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
    # the training reader's wording and counting (lines and columns from 1)
    assert "bad.csv: line 2, column 2: value nan is not finite" in one_line(err)


def test_train_on_a_tabular_file_with_nan_stops_in_one_line(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(30)) + "3,nan\n")
    code, _, err = cli(capsys, "train", "--data", "tabular", "--data-dir", path, "--out", tmp_path / "run",
                       "--quiet")
    assert code == 2 and "t.csv: line 32, column 2: value nan is not finite" in one_line(err)


def test_train_with_a_batch_larger_than_the_data_stops_in_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--batch-size", "5000", "--out", tmp_path / "run", *TINY_CPU)
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



@pytest.mark.parametrize("setting, message", [
    ("grad_clip=-1", "grad_clip must be a finite number > 0"),
    ("lr=NaN", "lr must be a finite number > 0"),
    ("lr=Infinity", "lr must be a finite number > 0"),
    ("eps=0", "eps must be a finite number > 0"),
    ("betas=[2,3]", "betas must be two numbers in [0, 1)"),
    ("num_workers=-1", "num_workers must be >= 0"),
    ("warmup_steps=-5", "warmup_steps must be >= 0"),
    ("sample_every=-1", "sample_every must be >= 0"),
    ("image_size=0", "image_size must be an integer >= 1"),
    ("valid_size=2.5", "valid_size must be a fraction"),
    ("patience=-1", "patience must be >= 0"),
])
def test_every_configuration_range_is_checked_before_anything_is_written(tmp_path, capsys, setting,
                                                                          message):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", *TINY_CPU, "--set", setting)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "run").exists()


def test_score_reads_images_by_the_training_rule_and_refuses_the_rest(tmp_path):
    from PIL import Image

    from realnvp.data import DataError
    from realnvp.score import read_inputs

    info = DataInfo("digits", "image", (1, 8, 8), 17)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "deep.png")
    ((_, deep, _),) = read_inputs([str(tmp_path / "deep.png")], info)
    assert int(deep.min()) == 16  # white, scaled (not clipped) to the top of 17 levels
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_inputs([str(tmp_path / "opaque.png")], info)[0][1].shape == (1, 1, 8, 8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tiff")
    Image.fromarray(np.zeros((400, 400), np.uint8)).save(tmp_path / "huge.png")
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.uint8))
    for name, message in [("clear.png", "transparent pixels"), ("float.tiff", "is not read"),
                          ("huge.png", "far larger than the model's input"),
                          ("empty.npy", "no images")]:
        with pytest.raises(DataError, match=message):
            read_inputs([str(tmp_path / name)], info)


def test_score_of_tabular_rows_is_in_the_inputs_units(tmp_path, capsys, tabular_run):
    import csv
    import io

    from realnvp.runs import load_run

    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c\n0.1,0.2,0.3\n1,2,3\n")  # a header, as train accepts
    code, out, _ = cli(capsys, "score", tabular_run, rows, "--checkpoint", "best")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["row"] for r in table] == ["1", "2"]
    run = load_run(tabular_run, "best")
    mean, std = np.asarray(run.info.mean), np.asarray(run.info.std)
    x = torch.tensor((np.array([[0.1, 0.2, 0.3], [1, 2, 3]]) - mean) / std, dtype=torch.float32)
    expected = -run.model.log_prob(x).detach().double().numpy() + np.log(std).sum()
    np.testing.assert_allclose([float(r["nll_nats"]) for r in table], expected, atol=1e-5)
