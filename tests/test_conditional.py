"""Conditional flows ``p(x | c)``: the context reaches every network, each conditional density is
exact (round trip, log-det against the autograd Jacobian, normalised), and a missing, unwanted
or misshapen context (or a label out of range) gets one clear error."""

from __future__ import annotations

import pytest
import torch

from helpers import jacobian_log_dets, perturb
from realnvp import Glow, RealNVP
from realnvp.models import FFJORD, IAF, MAF, FFJORDImage, NSFAutoregressive, NSFCoupling, VectorRealNVP
from realnvp.nets.context import ContextSlot, one_hot

K = 3


def vector_models():
    return {
        "realnvp": lambda: VectorRealNVP(2, num_couplings=4, hidden=16, context_features=K),
        "realnvp-plain": lambda: VectorRealNVP(2, num_couplings=4, hidden=16, batch_norm=False,
                                               weight_norm=False, context_features=K),
        "nsf-coupling": lambda: NSFCoupling(2, num_layers=2, hidden=16, bins=4, context_features=K),
        "maf": lambda: MAF(2, num_layers=2, hidden=16, context_features=K),
        "iaf": lambda: IAF(2, num_layers=2, hidden=16, context_features=K),
        "nsf-autoregressive": lambda: NSFAutoregressive(2, num_layers=2, hidden=16, bins=4,
                                                        context_features=K),
        # tight tolerances: the test compares the solved map with its Jacobian at 1e-7
        "ffjord": lambda: FFJORD(2, hidden=16, num_hidden_layers=1, rtol=1e-10, atol=1e-10,
                                 context_features=K),
    }


def image_model():
    return RealNVP((1, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1, context_features=K)


def ffjord_image_model():
    return FFJORDImage((1, 4, 4), num_scales=1, num_blocks=1, hidden_channels=2, num_hidden_layers=1,
                       trace="exact", rtol=1e-9, atol=1e-9, context_features=K)


def glow_model():
    return Glow((1, 4, 4), num_levels=2, steps_per_level=2, hidden_channels=4, context_features=K)


def _ready(model, x, c, scale=0.2):
    """Perturbed away from the identity, statistics settled by a training pass, in eval mode, float64."""
    torch.manual_seed(0)
    model = perturb(model.double(), scale)
    model.train()
    with torch.no_grad():
        model.log_prob(x, c)
    return model.eval()


@pytest.mark.parametrize("name", list(vector_models()) + ["image", "glow", "ffjord-image"])
def test_conditional_density_is_exact_given_the_context(name):
    torch.manual_seed(1)
    if name in ("image", "glow", "ffjord-image"):
        model = {"image": image_model, "glow": glow_model, "ffjord-image": ffjord_image_model}[name]()
        x = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    else:
        model, x = vector_models()[name](), torch.randn(3, 2, dtype=torch.float64)
    c = torch.randn(3, K, dtype=torch.float64)
    small = name in ("glow", "ffjord-image")  # Glow's samples overflow at 0.2
    model = _ready(model, x, c, 0.05 if small else 0.2)
    z, log_det = model.forward_with_log_det(x, c)
    torch.testing.assert_close(model.decode(z, c), x, atol=1e-8, rtol=1e-8)
    expected = jacobian_log_dets(lambda xb: model.encode(xb, c), x)
    torch.testing.assert_close(log_det.double(), expected, atol=1e-7, rtol=1e-7)
    other = model.log_prob(x, c.flip(0))
    assert not torch.allclose(other, model.log_prob(x, c)), "the context changes nothing"
    xs, log_p = model.rsample_and_log_prob(3, context=c)
    torch.testing.assert_close(log_p.double(), model.log_prob(xs.detach(), c).double(), atol=1e-6,
                               rtol=1e-6)


def test_every_conditional_density_integrates_to_one():
    model = vector_models()["nsf-coupling"]().double()
    torch.manual_seed(2)
    model = _ready(model, torch.randn(64, 2, dtype=torch.float64), torch.randn(64, K, dtype=torch.float64))
    side = torch.linspace(-9, 9, 361, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    step = float(side[1] - side[0])
    for c in torch.eye(K, dtype=torch.float64):
        with torch.no_grad():
            mass = model.log_prob(grid, c.expand(len(grid), K)).exp().sum() * step ** 2
        assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_samples_follow_the_context():
    model = vector_models()["maf"]()
    with torch.no_grad():
        model.eval()
        first = model.sample(4, context=torch.tensor([1.0, 0, 0]), generator=torch.Generator().manual_seed(0))
        again = model.sample(4, context=torch.tensor([1.0, 0, 0]).expand(4, K),
                             generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again)
    assert first.shape == (4, 2)


def test_gradients_reach_the_context_path():
    model = VectorRealNVP(2, num_couplings=2, hidden=8, context_features=K)
    c = torch.randn(5, K, requires_grad=True)
    model.log_prob(torch.randn(5, 2), c).sum().backward()
    assert c.grad is not None and bool(c.grad.abs().sum() > 0)


@pytest.mark.parametrize("name", ["realnvp", "iaf"])
def test_a_copy_after_a_differentiable_call_is_an_independent_conditional_flow(name):
    """The slot keeps the last call's context, a non-leaf tensor after a differentiable call (a
    training step, a VAE's ``h(x)``): copying the model (best-checkpoint selection, EMA) must
    work, and the copy's networks share one slot of their own."""
    import copy

    model = vector_models()[name]()
    c = torch.randn(5, K, requires_grad=True)
    x = torch.randn(5, 2)
    model.log_prob(x, 2 * c).sum().backward()
    twin = copy.deepcopy(model)
    assert twin.context_slot is not model.context_slot and twin.context_slot.value is None
    slots = {id(v) for m in twin.modules() for v in vars(m).values() if isinstance(v, ContextSlot)}
    assert slots == {id(twin.context_slot)}
    with torch.no_grad():
        torch.testing.assert_close(twin.log_prob(x, c), model.log_prob(x, c))


@pytest.mark.parametrize("call, message", [
    (lambda m, u: m.log_prob(torch.randn(2, 2)),
     r"this flow is conditional: pass a context of shape \(B, 3\)"),
    (lambda m, u: u.log_prob(torch.randn(2, 2), torch.randn(2, K)), "this flow is unconditional"),
    (lambda m, u: m.log_prob(torch.randn(2, 2), torch.randn(2, K + 1)),
     r"expected a context of shape \(2, 3\), got \(2, 4\)"),
    (lambda m, u: m.log_prob(torch.randn(2, 2), torch.randn(3, K)), r"got \(3, 3\)"),
    (lambda m, u: m.log_prob(torch.randn(2, 2), torch.tensor([[0, 1, 2], [1, 2, 0]])), "floating-point"),
    (lambda m, u: m.log_prob(torch.randn(2, 2), torch.full((2, K), float("nan"))), "NaN"),
    (lambda m, u: m.sample(2), "this flow is conditional"),
    (lambda m, u: u.sample(2, context=torch.zeros(K)), "this flow is unconditional"),
])
def test_a_wrong_context_is_one_clear_error(call, message):
    model = VectorRealNVP(2, num_couplings=2, hidden=8, context_features=K)
    plain = VectorRealNVP(2, num_couplings=2, hidden=8)
    with pytest.raises(ValueError, match=message):
        call(model, plain)


def test_labels_become_one_hot_contexts_and_out_of_range_labels_are_refused():
    torch.testing.assert_close(one_hot(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    with pytest.raises(ValueError, match="label 10 is out of range: the model has classes 0 to 9"):
        one_hot(torch.tensor([3, 10]), 10)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        one_hot(torch.tensor([-1]), 10)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        one_hot(torch.tensor([0.5]), 10)


def test_the_context_size_is_part_of_the_recorded_configuration():
    for make in vector_models().values():
        assert make().config["context_features"] == K
    assert image_model().config["context_features"] == K
    assert glow_model().config["context_features"] == K
    assert VectorRealNVP(2).context_features == 0


# ------------------------------------------------------------------ class-conditional runs


def test_digits_keeps_its_labels_and_a_labelled_view_pairs_them():
    from realnvp.config import Config
    from realnvp.training import load_split

    plain, info = load_split(Config(valid_size=0), "test")
    labelled, _ = load_split(Config(valid_size=0, conditional=True), "test")
    assert info.num_classes == 10
    image, label = labelled[5]
    assert torch.equal(image, plain[5]) and 0 <= int(label) < 10
    assert sorted(set(plain.labels.tolist())) == list(range(10))


def test_class_conditional_run_end_to_end(tmp_path, capsys):
    import numpy as np

    from helpers import TINY, cli, one_line

    run = tmp_path / "cond"
    assert cli(capsys, "train", "--set", "conditional=true", "--epochs", "1", "--max-steps", "3",
               "--out", run, *TINY, "--device", "cpu", "--set", "num_samples=10")[0] == 0
    assert (run / "samples.png").exists()
    code, out, _ = cli(capsys, "eval", run, "--dequant-samples", "1")
    assert code == 0 and "bits/dim over 300 examples" in out
    assert cli(capsys, "sample", run, "--label", "3", "-n", "4", "-o", run / "three.npy")[0] == 0
    assert np.load(run / "three.npy").shape == (4, 1, 8, 8)
    code, _, err = cli(capsys, "sample", run, "--label", "10", "-n", "4", "-o", run / "ten.npy")
    assert code == 2 and "label 10 is out of range: the model has classes 0 to 9" in one_line(err)
    assert not (run / "ten.npy").exists()
    code, _, err = cli(capsys, "score", run, run / "three.npy")
    assert code == 2 and "class-conditional: give --label N" in one_line(err)
    code, _, err = cli(capsys, "score", run, run / "three.npy", "--label", "10")
    assert code == 2 and "label 10 is out of range" in one_line(err)
    assert cli(capsys, "score", run, run / "three.npy", "--label", "3", "--dequant-samples", "1",
               "-o", run / "three.csv")[0] == 0
    from realnvp.evaluate import per_example_bits_per_dim
    from realnvp.runs import load_run
    from realnvp.runtime import seed_everything

    r = load_run(run, "last")
    seed_everything(0)  # score's --seed
    x = torch.from_numpy(np.load(run / "three.npy"))
    expected = per_example_bits_per_dim(r.model, x, r.info, 1, dequantizer=r.dequantizer,
                                        context=torch.nn.functional.one_hot(torch.full((4,), 3), 10).float())
    scored = np.loadtxt(run / "three.csv", delimiter=",", skiprows=1, usecols=2)
    np.testing.assert_allclose(scored, expected.numpy(), rtol=0, atol=2e-6)
    # export: both programs take the one-hot context as a second input
    assert cli(capsys, "export", run, "--checkpoint", "last", "-o", run / "served")[0] == 0
    import json

    assert json.loads((run / "served" / "export.json").read_text())["context_features"] == 10
    density = torch.export.load(str(run / "served" / "density.pt2")).module()
    sampler = torch.export.load(str(run / "served" / "sample.pt2")).module()
    y, z = torch.rand(3, 1, 8, 8), torch.randn(3, 64)
    context = torch.nn.functional.one_hot(torch.tensor([7, 0, 7]), 10).float()
    with torch.no_grad():
        torch.testing.assert_close(density(y, context), r.model.log_prob(y, context), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sampler(z, context), r.model.decode(z, context), rtol=1e-5, atol=1e-5)


def test_a_label_for_an_unconditional_run_and_labels_that_do_not_exist_are_refused(
        tmp_path, capsys, reference_run):
    from helpers import TINY, cli, one_line

    code, _, err = cli(capsys, "sample", reference_run, "--label", "3", "-o", tmp_path / "s.png")
    assert code == 2 and "this model is unconditional" in one_line(err)
    code, _, err = cli(capsys, "train", "--data", "toy:moons", "--set", "conditional=true",
                       "--out", tmp_path / "toy", *TINY)
    assert code == 2 and "toy:moons has no class labels (labelled: digits, mnist-5k, mnist, " \
        "fashion-mnist, cifar10)" in one_line(err)


# ------------------------------------------------------------- conditional tabular densities


def _columns_csv(path):
    import numpy as np

    rng = np.random.default_rng(0)
    c = rng.normal(size=(2000, 1))
    noise = 0.3 * rng.normal(size=(2000, 2))
    rows = np.concatenate([c + noise[:, :1], -c + noise[:, 1:], c], 1)
    np.savetxt(path, rows, delimiter=",")
    return rows


def test_context_columns_split_the_rows_and_keep_both_standardisations(tmp_path):
    from realnvp.config import Config
    from realnvp.training import load_split

    rows = _columns_csv(tmp_path / "t.csv")
    plain, whole = load_split(Config(data="tabular", data_dir=str(tmp_path / "t.csv"), valid_size=0), "train")
    split, info = load_split(Config(data="tabular", data_dir=str(tmp_path / "t.csv"), valid_size=0,
                                    context_columns=[0]), "train")
    assert info.shape == (2,) and info.context_features == 1
    assert (info.mean, info.context_mean) == (whole.mean[1:], whole.mean[:1])
    x, c = split[3]
    torch.testing.assert_close(torch.cat((c, x)), plain[3])
    assert rows.shape == (2000, 3)


@pytest.mark.parametrize("model", ["realnvp", "maf", "nsf-coupling", "ffjord"])
def test_conditional_tabular_run_end_to_end(tmp_path, capsys, model):
    import numpy as np

    from helpers import cli, one_line

    _columns_csv(tmp_path / "t.csv")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", "tabular", "--data-dir", tmp_path / "t.csv", "--context-columns",
               "2", "--model", model, "--epochs", "1", "--quiet", "--device", "cpu", "--set", "hidden=8",
               "--set", "num_couplings=2", "--out", run)[0] == 0
    assert cli(capsys, "eval", run)[0] == 0
    assert cli(capsys, "sample", run, "--context", "1.5", "-n", "7", "-o", run / "s.npy")[0] == 0
    assert np.load(run / "s.npy").shape == (7, 2)
    code, _, err = cli(capsys, "sample", run, "-n", "7", "-o", run / "none.npy")
    assert code == 2 and "give 1 value(s), got none" in one_line(err)
    code, _, err = cli(capsys, "sample", run, "--context", "1,2", "-n", "7", "-o", run / "two.npy")
    assert code == 2 and "give 1 value(s), got 2" in one_line(err)

    # score: rows in the training file's layout carry their context; the modelled columns alone
    # take it from --context; both are p(x | c) in the data's units
    xs = np.load(run / "s.npy").astype(np.float64)
    np.savetxt(run / "whole.csv", np.concatenate([xs, np.full((7, 1), 1.5)], 1), delimiter=",")
    np.savetxt(run / "modelled.csv", xs, delimiter=",")
    assert cli(capsys, "score", run, run / "whole.csv", "-o", run / "a.csv")[0] == 0
    assert cli(capsys, "score", run, run / "modelled.csv", "--context", "1.5", "-o", run / "b.csv")[0] == 0
    a, b = (np.loadtxt(run / n, delimiter=",", skiprows=1, usecols=3) for n in ("a.csv", "b.csv"))
    from realnvp.runs import load_run

    r = load_run(run, "last")
    info = r.info
    x = torch.from_numpy((xs - np.array(info.mean)) / np.array(info.std)).float()
    c = torch.full((7, 1), (1.5 - info.context_mean[0]) / info.context_std[0])
    with torch.no_grad():
        expected = -r.model.log_prob(x, c).double().numpy() + np.log(info.std).sum()
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    code, _, err = cli(capsys, "score", run, run / "whole.csv", "--context", "1.5")
    assert code == 2 and "the rows hold the context columns already" in one_line(err)
    code, _, err = cli(capsys, "score", run, run / "modelled.csv")
    assert code == 2 and "give 1 value(s), got none" in one_line(err)
    code, _, err = cli(capsys, "score", run, run / "modelled.csv", "--label", "1")
    assert code == 2 and "conditioned on context columns, not on classes" in one_line(err)
    np.savetxt(run / "wide.csv", np.zeros((2, 4)), delimiter=",")
    code, _, err = cli(capsys, "score", run, run / "wide.csv")
    assert code == 2 and "training file's 3 columns, or of the 2 modelled ones" in one_line(err)


@pytest.mark.parametrize("columns, message", [("5", "column 5 does not exist"),
                                              ("0,1,2", "leaves none to model")])
def test_impossible_context_columns_are_refused(tmp_path, capsys, columns, message):
    from helpers import cli, one_line

    _columns_csv(tmp_path / "t.csv")
    code, _, err = cli(capsys, "train", "--data", "tabular", "--data-dir", tmp_path / "t.csv",
                       "--context-columns", columns, "--quiet", "--out", tmp_path / "run")
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "run").exists()


def test_context_columns_key_is_checked():
    from realnvp.config import Config, ConfigError

    for bad in ([-1], [1, 1], "2", [True]):
        with pytest.raises(ConfigError, match="context_columns must be a list of distinct column numbers"):
            Config(context_columns=bad).replace()
