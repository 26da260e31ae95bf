"""Continuous normalizing flows (FFJORD): the trace estimators, the log-det against the autograd
Jacobian of the solved map, the inverse, normalisation, adjoint gradients, the max-NFE guard, a CNF
among other bijectors, and every command on a tiny ``model=ffjord`` run (with exact resume)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from helpers import cli, jacobian_log_dets, metrics_rows, one_line, perturb
from realnvp.bijectors import CNF, AffineCoupling, Halves, ODESolverError, Sequential
from realnvp.bijectors.cnf import exact_divergence, hutchinson_divergence
from realnvp.config import Config
from realnvp.data import DataInfo
from realnvp.models import FFJORD, FFJORDImage
from realnvp.models.build import build_model
from realnvp.nets import MLP
from realnvp.nets.odefunc import ConcatSquashMLP


def _dynamics(dim: int, hidden: int = 16, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return perturb(ConcatSquashMLP(dim, hidden, 2), scale=0.8, seed=seed).to(dtype)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise):
    f_net = _dynamics(5, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(1, 5, generator=g, dtype=torch.float64)
    n = 20000
    z = z0.expand(n, 5).clone().requires_grad_(True)  # n independent draws at one point
    f = f_net(torch.tensor(0.3, dtype=torch.float64), z)
    exact = exact_divergence(f, z, create_graph=False)[0]
    torch.manual_seed(2)
    eps = torch.randn_like(z) if noise == "gaussian" else torch.randint(0, 2, z.shape).to(z) * 2 - 1
    est, _ = hutchinson_divergence(f, z, eps, create_graph=False)
    se = est.std() / n ** 0.5
    assert abs(est.mean() - exact) < 4 * se, (float(est.mean()), float(exact), float(se))
    assert se > 0


def test_exact_trace_log_det_is_the_log_det_of_the_solved_map():
    dyn = _dynamics(3, dtype=torch.float64)
    cnf = CNF(dyn, t1=0.7, trace="exact", rtol=1e-10, atol=1e-10).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    z, log_det = cnf(x)
    expected = jacobian_log_dets(lambda xb: cnf(xb)[0], x)
    assert expected.abs().max() > 0.1  # far from volume-preserving
    torch.testing.assert_close(log_det, expected, atol=1e-7, rtol=1e-6)
    x_back, inv_log_det = cnf.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(inv_log_det, -log_det, atol=1e-8, rtol=0)


def test_round_trip_at_the_default_tolerances():
    torch.manual_seed(0)
    model = perturb(FFJORD(2, hidden=16, num_hidden_layers=2), scale=0.2).eval()
    x = torch.randn(256, 2)
    z, log_det = model.bijector(x)
    x_back, inv = model.bijector.inverse(z)
    assert (x_back - x).abs().max() <= 1e-4
    assert (inv + log_det).abs().max() <= 1e-4
    assert (model.decode(model.encode(x)) - x).abs().max() <= 1e-4


def test_two_dimensional_density_integrates_to_one():
    torch.manual_seed(0)
    model = perturb(FFJORD(2, hidden=16, num_hidden_layers=2, t1=1.0), scale=0.3).eval()
    samples = model.sample(2000)
    assert samples.abs().max() > 4 and (samples.std(0) - 1).abs().max() < 0.2  # not N(0, I)
    h, lim = 0.1, 10.0
    g = torch.arange(-lim + h / 2, lim, h)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        log_p = model.log_prob(grid)
    mass = float(log_p.double().exp().sum() * h * h)
    assert abs(mass - 1) < 5e-3, mass
    assert model.bijector[0].trace_mode(2) == "exact"


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_and_plain_gradients_agree(trace):
    grads = []
    for adjoint in (False, True):
        dyn = _dynamics(3, hidden=8, dtype=torch.float64)
        cnf = CNF(dyn, t1=0.5, train_t1=True, trace=trace, adjoint=adjoint, rtol=1e-9, atol=1e-9,
                  kinetic_energy=0.1, jacobian_norm=0.1).double()
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        torch.manual_seed(4)  # the same Hutchinson noise in both solves
        z, log_det = cnf(x)
        loss = (0.5 * z.pow(2).sum(1) - log_det).mean() + cnf.regularization
        grads.append(torch.autograd.grad(loss, list(cnf.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_regularisers_are_recorded_in_training_only():
    model = FFJORD(2, hidden=8, kinetic_energy=0.5, jacobian_norm=0.5)
    x = torch.randn(16, 2)
    model.train()
    model.log_prob(x)
    reg = model.regularization_loss()
    assert reg.requires_grad and float(reg.detach()) > 0
    assert set(model.bijector[0].regularization_terms) == {"kinetic_energy", "jacobian_norm"}
    copied = copy.deepcopy(model)  # as the trainer copies it to load the best checkpoint
    assert copied.regularization_loss() == 0.0 and model.regularization_loss().requires_grad
    model.eval()
    model.log_prob(x)
    assert model.regularization_loss() == 0.0
    assert model.nfe > 0


class _Stiff(torch.nn.Module):
    def forward(self, t, z):
        return -1e5 * z


class _BlowUp(torch.nn.Module):
    def forward(self, t, z):
        return 10 * z.pow(2)


def test_the_max_nfe_guard_stops_stiff_dynamics_with_a_clear_error():
    cnf = CNF(_Stiff(), max_nfe=300)
    with pytest.raises(ODESolverError, match="max_nfe guard.*max_nfe=300"):
        cnf(torch.ones(4, 2))
    assert cnf.nfe == 301
    with pytest.raises(ODESolverError, match="max_nfe|underflow"):  # finite-time blow-up at t = 0.1
        CNF(_BlowUp(), max_nfe=2000)(torch.ones(4, 2))


def test_test_tolerances_rule_eval_mode_only():
    """``test_rtol``/``test_atol`` (the reference code's ``--test_rtol/--test_atol``): training
    solves at ``rtol``/``atol``, eval mode at the test ones, as a CNF built with them would."""
    loose = CNF(_dynamics(2), t1=0.5, rtol=1e-2, atol=1e-2, test_rtol=1e-7, test_atol=1e-8)
    tight = CNF(_dynamics(2), t1=0.5, rtol=1e-7, atol=1e-8)
    plain = CNF(_dynamics(2), t1=0.5, rtol=1e-2, atol=1e-2)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    assert loose.tolerances() == (1e-2, 1e-2)
    z_train, ld_train = loose(x)
    torch.testing.assert_close((z_train, ld_train), plain(x), rtol=0, atol=0)
    nfe_train = loose.nfe
    loose.eval(), tight.eval()
    assert loose.tolerances() == (1e-7, 1e-8)
    z_eval, ld_eval = loose(x)
    torch.testing.assert_close((z_eval, ld_eval), tight(x), rtol=0, atol=0)
    assert loose.nfe > nfe_train
    with pytest.raises(ODESolverError, match=r"rtol=1e-07, atol=1e-08"):
        stiff = CNF(_Stiff(), max_nfe=50, rtol=1e-2, atol=1e-2, test_rtol=1e-7, test_atol=1e-8)
        stiff.eval()(torch.ones(4, 2))
    with pytest.raises(ValueError, match="test_rtol and test_atol must be > 0"):
        CNF(_dynamics(2), test_rtol=0.0)


def test_a_fixed_grid_training_solve_and_an_adaptive_test_solve():
    """RNODE's recipe through the reference code's ``--step_size``/``--test_solver``: training
    steps rk4 on a grid of ``1 / step_size`` steps (4 evaluations each), eval mode solves with the
    test solver at the test tolerances, as a CNF built with them would."""
    grid = CNF(_dynamics(2), t1=0.5, solver="rk4", step_size=0.25, test_solver="dopri5",
               test_rtol=1e-7, test_atol=1e-8)
    plain_grid = CNF(_dynamics(2), t1=0.5, solver="rk4", step_size=0.25)
    tight = CNF(_dynamics(2), t1=0.5, rtol=1e-7, atol=1e-8)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    z_train, ld_train = grid(x)
    assert grid.nfe == 16 and grid.solver_now() == "rk4"
    torch.testing.assert_close((z_train, ld_train), plain_grid(x), rtol=0, atol=0)
    grid.eval(), tight.eval(), plain_grid.eval()
    assert grid.solver_now() == "dopri5"
    z_eval, ld_eval = grid(x)
    torch.testing.assert_close((z_eval, ld_eval), tight(x), rtol=0, atol=0)
    assert grid.nfe == tight.nfe != 16
    assert (z_eval - plain_grid(x)[0]).abs().max() > 1e-7  # four rk4 steps are not the exact map
    assert plain_grid.nfe == 16  # without a test solver, eval mode keeps the grid
    with pytest.raises(ValueError, match="test_solver must be one of"):
        CNF(_dynamics(2), test_solver="rk5")
    with pytest.raises(ValueError, match=r"step_size must be in \(0, 1\]"):
        CNF(_dynamics(2), solver="rk4", step_size=0.0)


def test_a_cnf_in_a_sequential_with_a_coupling():
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        mask = Halves(2)
        coupling = perturb(AffineCoupling(mask, MLP(mask.in_features, 2 * mask.out_features, hidden=8,
                                                    num_layers=1)), scale=0.3)
        chain = Sequential(CNF(_dynamics(2, dtype=torch.float64), t1=0.5, rtol=1e-10, atol=1e-10),
                           coupling, CNF(_dynamics(2, seed=1, dtype=torch.float64), rtol=1e-10, atol=1e-10))
        chain.eval()
        x = torch.randn(3, 2)
        z, log_det = chain(x)
        torch.testing.assert_close(log_det, jacobian_log_dets(lambda xb: chain(xb)[0], x), atol=1e-7,
                                   rtol=1e-6)
        torch.testing.assert_close(chain.invert(z), x, atol=1e-8, rtol=0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_image_model_is_the_odenvp_layout():
    torch.manual_seed(0)
    model = FFJORDImage((1, 8, 8), hidden_channels=4, num_hidden_layers=1, num_blocks=1, rtol=1e-3,
                        atol=1e-3)
    assert model.config["num_scales"] == 2  # 8 -> 4 -> 2: as many halvings as keep H, W >= 4
    assert model.bijector[1].latent_shapes == [(2, 4, 4), (2, 4, 4)]
    assert sum(isinstance(m, CNF) for m in model.modules()) == 3
    x = torch.rand(2, 1, 8, 8)
    log_p = model.log_prob(x)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all() and model.nfe > 0
    with torch.no_grad():
        assert (model.decode(model.encode(x)) - x).abs().max() < 1e-2  # at 1e-3 tolerances


def test_config_keys_reach_the_model():
    cfg = Config(model="ffjord", hidden=8, num_layers=1, num_blocks=2, ode_solver="rk4", ode_rtol=1e-4,
                 ode_atol=1e-6, ode_adjoint=True, trace_estimator="hutchinson", kinetic_energy=0.01,
                 max_nfe=50)
    model = build_model(cfg, DataInfo("toy:moons", "vector", (2,), None))
    assert type(model) is FFJORD
    cnf = model.bijector[1]
    assert (cnf.solver, cnf.rtol, cnf.atol, cnf.adjoint, cnf.trace, cnf.kinetic_energy, cnf.max_nfe) == \
        ("rk4", 1e-4, 1e-6, True, "hutchinson", 0.01, 50)
    assert (cnf.test_rtol, cnf.test_atol, cnf.test_solver, cnf.step_size) == (None, None, None, 0.05)
    assert cnf.end_time.item() == pytest.approx(0.5) and isinstance(cnf.sqrt_end_time, torch.nn.Parameter)
    cnf = build_model(cfg.replace(ode_test_rtol=1e-6, ode_test_atol=1e-7, ode_test_solver="dopri5",
                                  ode_step_size=0.25, ode_t1=1.0, ode_train_t1=False),
                      DataInfo("toy:moons", "vector", (2,), None)).bijector[0]
    assert (cnf.test_rtol, cnf.test_atol, cnf.test_solver, cnf.step_size) == (1e-6, 1e-7, "dopri5", 0.25)
    assert cnf.end_time.item() == pytest.approx(1.0) and not isinstance(cnf.sqrt_end_time, torch.nn.Parameter)
    image = build_model(Config(model="ffjord", hidden_channels=4, num_layers=1, num_blocks=1),
                        DataInfo("digits", "image", (1, 8, 8), 17))
    assert type(image) is FFJORDImage


def test_the_shipped_toy_recipe_trains_loose_and_scores_at_the_reference_tolerances():
    from realnvp.config import CONFIG_DIR, read_config_file

    cfg = read_config_file(CONFIG_DIR / "ffjord-toy.json").replace(data="toy:2spirals")
    model = build_model(cfg, DataInfo(cfg.data, "vector", (2,), None))
    assert type(model) is FFJORD and len(model.bijector) == 1
    cnf = model.bijector[0]
    assert (cnf.solver, cnf.trace, cnf.rtol, cnf.atol) == ("dopri5", "exact", 1e-3, 1e-3)
    model.eval()
    assert cnf.tolerances() == (1e-5, 1e-5)  # validation, test and samples at the reference's
    assert (model.config["hidden"], model.config["num_hidden_layers"]) == (64, 3)


FFJORD_RUN = ["--quiet", "--device", "cpu", "--data", "toy:moons", "--set", "model=ffjord",
              "--set", "hidden=8", "--set", "num_layers=1", "--set", "num_blocks=1",
              "--set", "batch_size=2048", "--set", "eval_dequant_samples=1", "--set", "num_samples=64",
              "--set", "sample_every=0", "--set", "ode_rtol=1e-4", "--set", "ode_atol=1e-4",
              "--set", "kinetic_energy=0.01", "--set", "threads=1", "--set", "toy_train_size=20000"]


def test_every_command_and_exact_resume_for_ffjord(capsys, tmp_path):
    run = tmp_path / "ffjord"
    assert cli(capsys, "train", "--out", run, "--epochs", "2", *FFJORD_RUN)[0] == 0
    rows = metrics_rows(run)
    assert len(rows) == 2 and all(float(r["nfe"]) > 0 for r in rows)
    resumed = tmp_path / "resumed"
    assert cli(capsys, "train", "--out", resumed, "--epochs", "2", "--max-steps", "5", *FFJORD_RUN)[0] == 0
    assert cli(capsys, "train", "--resume", resumed, "--quiet")[0] == 0
    assert metrics_rows(resumed) == rows
    a, b = (json.loads((r / "eval.json").read_text()) for r in (run, resumed))
    assert a["nll_nats"] == b["nll_nats"]

    code, _, _ = cli(capsys, "eval", run, "--json", run / "e.json")
    assert code == 0 and np.isfinite(json.loads((run / "e.json").read_text())["nll_nats"])
    assert cli(capsys, "sample", run, "-n", "3", "-o", run / "s.npy")[0] == 0
    assert np.load(run / "s.npy").shape == (3, 2)
    code, out, _ = cli(capsys, "info", run, "--json")
    assert code == 0 and json.loads(out)["config"]["model"] == "ffjord"
    assert cli(capsys, "score", run, run / "s.npy", "-o", run / "scores.csv")[0] == 0
    code, _, err = cli(capsys, "export", run, "-o", run / "served")
    assert code == 2 and "does not take continuous-time flows" in one_line(err)
    assert not (run / "served").exists()


def test_the_guard_ends_a_training_run_in_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--max-steps", "1", *FFJORD_RUN,
                       "--set", "max_nfe=3")
    assert code == 1
    assert "max_nfe guard" in one_line(err)


@pytest.mark.parametrize("name, shape, scales", [("ffjord-mnist", (1, 28, 28), 3),
                                                 ("ffjord-cifar10", (3, 32, 32), 4)])
def test_the_shipped_image_recipes_build_the_reference_layout(name, shape, scales):
    from realnvp.config import CONFIG_DIR, read_config_file

    cfg = read_config_file(CONFIG_DIR / f"{name}.json")
    model = build_model(cfg, DataInfo(cfg.data, "image", shape, 256, num_classes=10))
    assert isinstance(model, FFJORDImage) and model.config["num_scales"] == scales
    assert (model.config["hidden_channels"], model.config["num_hidden_layers"],
            model.config["num_blocks"], model.config["trace"]) == (64, 3, 2, "hutchinson")
    # the same recipe class-conditional: every CNF reads the label's one-hot context
    conditional = build_model(cfg.replace(conditional=True), DataInfo(cfg.data, "image", shape, 256,
                                                                      num_classes=10))
    assert conditional.context_features == 10
