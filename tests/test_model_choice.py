"""One way to choose a model everywhere: ``model`` in the configuration, every command on a run
of each model, the run recording the model (``eval`` needs no flags), and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import cli, one_line
from realnvp import Glow, RealNVP
from realnvp.config import MODELS, Config, ConfigError
from realnvp.data import DataInfo
from realnvp.models import IAF, MAF, NSFAutoregressive, NSFCoupling, VectorRealNVP
from realnvp.models.build import IMAGE_MODELS, VECTOR_MODELS, build_model

VECTOR_CLASSES = {"realnvp": VectorRealNVP, "maf": MAF, "iaf": IAF, "nsf-coupling": NSFCoupling,
                  "nsf-autoregressive": NSFAutoregressive}
IMAGE_CLASSES = {"realnvp": RealNVP, "glow": Glow}
SMALL_VECTOR = ["--set", "hidden=8", "--set", "num_couplings=2", "--set", "eval_dequant_samples=1"]
SMALL_IMAGE = ["--set", "hidden_channels=4", "--set", "num_blocks=1", "--set", "steps_per_level=1",
               "--set", "eval_dequant_samples=1"]
VECTOR = DataInfo("toy:moons", "vector", (2,), None)
IMAGE = DataInfo("digits", "image", (1, 8, 8), 17)
COMMON = ["--quiet", "--device", "cpu", "--epochs", "1", "--max-steps", "3", "--set", "num_samples=4",
          "--set", "sample_every=0"]


def test_every_model_is_built_for_its_kind_of_data():
    assert set(IMAGE_MODELS) | set(VECTOR_MODELS) == set(MODELS)
    for name, cls in VECTOR_CLASSES.items():
        model = build_model(Config(model=name, hidden=8, num_couplings=2, bins=4), VECTOR)
        assert type(model) is cls
    for name, cls in IMAGE_CLASSES.items():
        model = build_model(Config(model=name, hidden_channels=4, steps_per_level=1), IMAGE)
        assert type(model) is cls


def test_configuration_keys_reach_the_models():
    nsf = build_model(Config(model="nsf-coupling", num_couplings=3, hidden=8, num_layers=1, bins=5,
                             spline_bound=2.5), VECTOR)
    assert nsf.config | {"num_layers": 3, "hidden": 8, "num_hidden_layers": 1, "bins": 5,
                         "bound": 2.5} == nsf.config
    maf = build_model(Config(model="maf", num_couplings=4, batch_norm=False), VECTOR)
    assert (maf.config["num_layers"], maf.config["batch_norm"]) == (4, False)
    glow = build_model(Config(model="glow", num_scales=2, steps_per_level=3, hidden_channels=4,
                              coupling="additive"), IMAGE)
    assert (glow.config["num_levels"], glow.config["steps_per_level"], glow.config["coupling"]) == \
        (2, 3, "additive")
    glow = build_model(Config(model="glow", num_scales=1, steps_per_level=1, hidden_channels=4,
                              dropout=0.1), IMAGE)
    assert glow.config["dropout"] == 0.1
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in glow.modules()) == 1
    realnvp = build_model(Config(factor_out="channels", hidden_channels=4, dropout=0.25),
                          IMAGE)
    assert (realnvp.config["factor_out"], realnvp.config["dropout"]) == ("channels", 0.25)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.25 for m in realnvp.modules()) > 0


@pytest.mark.parametrize("model, info", [("ffjord", IMAGE), ("maf", VECTOR), ("realnvp", VECTOR)])
def test_dropout_is_a_key_of_the_image_coupling_models_only(model, info):
    """Like the other architecture keys, ``dropout`` applies where the model has such a network
    (the digits recipe sets it, and ``--set model=ffjord`` on digits must still work)."""
    net = build_model(Config(model=model, dropout=0.1, hidden_channels=4, num_scales=1, hidden=8,
                             num_couplings=2), info)
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())


@pytest.mark.parametrize("model, kind", [("glow", "vector"), ("maf", "image"), ("iaf", "image"),
                                         ("nsf-coupling", "image")])
def test_a_model_for_the_other_kind_of_data_is_refused(model, kind):
    info = VECTOR if kind == "vector" else IMAGE
    with pytest.raises(ConfigError, match=f"model {model} is not available for {kind} data"):
        build_model(Config(model=model), info)


@pytest.mark.parametrize("change, key", [({"model": "flowpp"}, "model"), ({"bins": 0}, "bins"),
                                         ({"spline_bound": 0.0}, "spline_bound"),
                                         ({"steps_per_level": 0}, "steps_per_level"),
                                         ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout")])
def test_bad_model_keys_are_refused(change, key):
    with pytest.raises(ConfigError, match=key):
        Config().replace(**change)


def test_cli_refuses_a_model_for_the_wrong_data_in_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--data", "toy:moons", "--model", "glow",
                       "--out", tmp_path / "run", *COMMON)
    assert code == 2
    assert "model glow is not available for vector data" in one_line(err)
    assert not (tmp_path / "run").exists()


def _every_command(capsys, run, image: bool):
    code, _, _ = cli(capsys, "eval", run, "--json", run / "e.json")  # the run says which model
    assert code == 0 and np.isfinite(json.loads((run / "e.json").read_text())["bits_per_dim"])
    assert cli(capsys, "sample", run, "-n", "3", "-o", run / "s.npy")[0] == 0
    assert np.load(run / "s.npy").shape[0] == 3
    code, out, _ = cli(capsys, "info", run, "--json")
    assert code == 0
    assert cli(capsys, "score", run, run / "s.npy", "-o", run / "scores.csv")[0] == 0
    if image:
        assert cli(capsys, "interpolate", run, "--out", run / "i.png")[0] == 0
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.parametrize("model", VECTOR_MODELS)
def test_every_command_works_for_each_vector_model(capsys, tmp_path, model):
    run = tmp_path / model
    assert cli(capsys, "train", "--data", "toy:moons", "--set", f"model={model}", "--out", run,
               *COMMON, *SMALL_VECTOR)[0] == 0
    info = _every_command(capsys, run, image=False)
    assert info["config"]["model"] == model


@pytest.mark.slow
def test_every_command_works_for_glow(capsys, tmp_path):
    run = tmp_path / "glow"
    assert cli(capsys, "train", "--set", "model=glow", "--out", run, *COMMON, *SMALL_IMAGE)[0] == 0
    info = _every_command(capsys, run, image=True)
    assert info["config"]["model"] == "glow"


def test_iaf_samples_carry_their_density_in_one_pass():
    torch.manual_seed(0)
    model = build_model(Config(model="iaf", hidden=8, num_couplings=2), VECTOR)
    model.eval()
    x, log_p = model.rsample_and_log_prob(16)
    torch.testing.assert_close(log_p, model.log_prob(x.detach()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, shape, latent_parts", [
    ("glow-cifar10", (3, 32, 32), 3), ("glow-imagenet32", (3, 32, 32), 3),
    ("glow-imagenet64", (3, 64, 64), 4)])
def test_glow_recipes_build_the_papers_layout(name, shape, latent_parts):
    from realnvp.config import read_config_file

    cfg = read_config_file(name)
    assert (cfg.model, cfg.hidden_channels, cfg.coupling) == ("glow", 512, "affine")
    # the paper's levels and steps at a width that builds in a moment
    model = build_model(cfg.replace(hidden_channels=4), DataInfo(cfg.data, "image", shape, 256))
    assert model.config["num_levels"] == latent_parts
    assert model.config["steps_per_level"] == cfg.steps_per_level
