"""``realnvp export RUN -o FILE.onnx``: the density path through PyTorch's ONNX exporter, checked
with onnxruntime (the optional ``onnx`` extra; these tests are skipped without it, except the one
that checks the missing extra is named)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import TINY, cli, one_line

STEPS = ["--epochs", "1", "--max-steps", "3", "--device", "cpu", "--set", "num_samples=4",
         "--set", "sample_every=0"]


def test_a_missing_onnx_extra_is_named(tmp_path, monkeypatch):
    from realnvp.export import ExportError, export_onnx
    from realnvp.models import VectorRealNVP

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    with pytest.raises(ExportError, match=r"pip install 'realnvp\[onnx\]'"):
        export_onnx(VectorRealNVP(2, num_couplings=2, hidden=8), torch.randn(4, 2), tmp_path / "d.onnx", None)
    assert not (tmp_path / "d.onnx").exists()


def test_the_onnx_density_equals_the_eager_model_on_test_data(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from realnvp.inputs import pixels_to_unit
    from realnvp.runs import load_run
    from realnvp.training import load_split

    run = tmp_path / "digits"
    assert cli(capsys, "train", "--out", run, *STEPS, *TINY)[0] == 0
    code, out, err = cli(capsys, "export", run, "--checkpoint", "last", "-o", tmp_path / "density.onnx")
    assert code == 0, err
    assert "density path as ONNX" in out and "on 64 test examples" in out
    loaded = load_run(run, "last")
    dataset, _ = load_split(loaded.config, "test", None, augment=False)
    y = pixels_to_unit(torch.stack([dataset[i] for i in range(100, 137)]), loaded.info)  # 37 rows
    session = ort.InferenceSession(str(tmp_path / "density.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["log_prob"], {"y": y.numpy()})[0])
    with torch.no_grad():
        want = loaded.model.log_prob(y)
    assert got.shape == (37,)
    # log-densities of ~100 nats in float32: 1e-5 relative is round-off
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    info = json.loads(session.get_modelmeta().custom_metadata_map["realnvp"])
    assert info["event_shape"] == [1, 8, 8] and info["num_levels"] == 17 and info["units"] == "nats"


def test_spline_models_export_and_a_model_the_exporter_cannot_take_is_one_line(tmp_path, capsys):
    """The spline kernel finds its bins by comparisons (no searchsorted), so NSF exports, and so
    does a MAF with a mixture base; FFJORD's solver loop cannot be traced and is refused in one
    line, writing nothing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    nsf = tmp_path / "nsf"
    assert cli(capsys, "train", "--data", "toy:moons", "--model", "nsf-coupling", "--out", nsf, *STEPS,
               "--quiet", "--set", "num_couplings=2", "--set", "hidden=8")[0] == 0
    code, out, err = cli(capsys, "export", nsf, "--checkpoint", "last", "-o", tmp_path / "nsf.onnx")
    assert code == 0 and "density path as ONNX" in out, err
    mog = tmp_path / "maf-mog"  # the MADE MoG base density (MAF MoG) exports too
    assert cli(capsys, "train", "--data", "toy:moons", "--model", "maf", "--out", mog, *STEPS, "--quiet",
               "--set", "num_couplings=2", "--set", "hidden=8", "--set", "mog_components=3")[0] == 0
    code, out, err = cli(capsys, "export", mog, "--checkpoint", "last", "-o", tmp_path / "mog.onnx")
    assert code == 0 and "density path as ONNX" in out, err
    ffjord = tmp_path / "ffjord"
    assert cli(capsys, "train", "--data", "toy:moons", "--model", "ffjord", "--out", ffjord, *STEPS,
               "--quiet", "--set", "hidden=8", "--set", "num_layers=1", "--set", "ode_rtol=1e-3",
               "--set", "ode_atol=1e-3")[0] == 0
    code, out, err = cli(capsys, "export", ffjord, "--checkpoint", "last", "-o", tmp_path / "cnf.onnx")
    assert code == 2 and "export does not take continuous-time flows" in one_line(err)
    assert not (tmp_path / "cnf.onnx").exists()


def test_a_class_conditional_density_takes_its_context(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from realnvp.runs import load_run

    run = tmp_path / "cond"
    assert cli(capsys, "train", "--out", run, *STEPS, *TINY, "--set", "conditional=true")[0] == 0
    code, out, err = cli(capsys, "export", run, "--checkpoint", "last", "-o", tmp_path / "cond.onnx")
    assert code == 0, err
    loaded = load_run(run, "last")
    y = torch.rand(5, 1, 8, 8)
    context = torch.nn.functional.one_hot(torch.tensor([3, 1, 4, 1, 5]), 10).float()
    session = ort.InferenceSession(str(tmp_path / "cond.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["y", "context"]
    got = torch.from_numpy(session.run(["log_prob"], {"y": y.numpy(), "context": context.numpy()})[0])
    with torch.no_grad():
        want = loaded.model.log_prob(y, context)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert json.loads(session.get_modelmeta().custom_metadata_map["realnvp"])["context_features"] == 10
