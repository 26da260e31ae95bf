"""Variational inference with flows (issue 17): planar and radial layers, targets, the reverse-KL
estimators and bounds, fitting through the trainer and ``realnvp fit``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import cli, jacobian_log_dets, metrics_rows, one_line
from realnvp.bijectors import Bijector, NoDensityDirection, Planar, Radial, Sequential
from realnvp.config import Config
from realnvp.models import Flow
from realnvp.training.variational import ReverseKL, fit
from realnvp.vi import (
    POSTERIORS,
    TARGETS,
    Gaussian,
    GaussianPosterior,
    NoSamplingDirection,
    PlanarFlow,
    RadialFlow,
    TargetError,
    build_posterior,
    checked,
    estimate,
    get_target,
    importance_weighted_bound,
    log_normaliser,
)
from realnvp.vi.bounds import draw, log_weights

D64 = torch.float64


def _planar(dim, u, w, b, density=False):
    layer = Planar(dim, density_direction=density).double()
    with torch.no_grad():
        layer.u.copy_(torch.as_tensor(u, dtype=D64))
        layer.w.copy_(torch.as_tensor(w, dtype=D64))
        layer.b.fill_(b)
    return layer


#: (u, w, b): raw parameters in every regime of the constraint, in 2-D
PLANAR_REGIMES = {
    "wu_positive": ([0.5, 0.3], [1.0, 0.2], 0.1),
    "wu_slightly_negative": ([-0.4, 0.1], [1.0, 0.5], -0.3),
    "wu_below_minus_one": ([-3.0, -2.0], [2.0, 1.0], 0.0),  # non-invertible without û
    "wu_far_below": ([-50.0, 10.0], [4.0, -1.0], 0.5),
    "tiny_w": ([1.0, -1.0], [1e-4, 2e-4], 0.0),
    "large_b": ([0.7, -0.2], [0.5, 0.5], 6.0),
}


@pytest.mark.parametrize("regime", sorted(PLANAR_REGIMES))
def test_planar_log_det_is_the_jacobians_in_every_regime(regime):
    layer = _planar(2, *PLANAR_REGIMES[regime], density=True)
    assert float((layer.w @ layer.u_hat()).detach()) > -1  # the constraint holds whatever the raw u, w
    z = torch.randn(16, 2, dtype=D64, generator=torch.Generator().manual_seed(1)) * 2
    x, ld = layer.inverse(z)
    torch.testing.assert_close(ld, jacobian_log_dets(layer.invert, z), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(ld).all()
    # the numerical inverse (density direction): round trip and the opposite log-det
    z_back, ld_back = layer(x)
    torch.testing.assert_close(z_back, z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ld_back, -ld, rtol=1e-9, atol=1e-9)


def test_planar_log_det_in_higher_dimension_and_at_the_boundary():
    """dim 5; and wᵀû close to −1 (raw wᵀu very negative), where the map is nearly singular."""
    g = torch.Generator().manual_seed(2)
    for u, w in ((torch.randn(5, generator=g, dtype=D64), torch.randn(5, generator=g, dtype=D64)),
                 (-20 * torch.ones(5, dtype=D64), torch.ones(5, dtype=D64))):
        layer = _planar(5, u, w, 0.2)
        z = torch.randn(8, 5, dtype=D64, generator=g)
        torch.testing.assert_close(layer.inverse(z)[1], jacobian_log_dets(layer.invert, z),
                                   rtol=1e-8, atol=1e-8)


def test_planar_numerical_inverse_has_the_implicit_gradient():
    """The bisection carries no graph; its last Newton step gives the exact derivatives with
    respect to the data and to u, w, b (gradcheck against finite differences)."""
    layer = _planar(2, [-3.0, 1.0], [1.0, 2.0], 0.3, density=True)
    x = torch.randn(4, 2, dtype=D64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    names = ("u", "w", "b")

    def by_params(*params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x.detach(),))

    assert torch.autograd.gradcheck(by_params, tuple(getattr(layer, n).detach().clone().requires_grad_()
                                                     for n in names))


#: (alpha_raw, beta_raw): α small/large, β near −α (raw very negative), β > 0
RADIAL_REGIMES = {"beta_near_minus_alpha": (0.0, -8.0), "beta_positive": (0.5, 2.0),
                  "small_alpha": (-5.0, 0.3), "large_alpha": (3.0, -1.0), "beta_zero_ish": (0.0, 0.69)}


@pytest.mark.parametrize("regime", sorted(RADIAL_REGIMES))
@pytest.mark.parametrize("dim", [1, 2, 4])
def test_radial_log_det_is_the_jacobians_in_every_regime(regime, dim):
    a_raw, b_raw = RADIAL_REGIMES[regime]
    layer = Radial(dim, density_direction=True).double()
    with torch.no_grad():
        layer.alpha_raw.fill_(a_raw)
        layer.beta_raw.fill_(b_raw)
    alpha, beta = (t.detach() for t in layer.alpha_beta())
    assert float(beta) > -float(alpha)
    g = torch.Generator().manual_seed(4)
    z = layer.z0.detach() + torch.randn(12, dim, dtype=D64, generator=g) * torch.tensor(
        [0.01, 0.1, 1.0, 5.0]).repeat(3).unsqueeze(1).to(D64)  # near z0 and far
    x, ld = layer.inverse(z)
    torch.testing.assert_close(ld, jacobian_log_dets(layer.invert, z), rtol=1e-8, atol=1e-8)
    z_back, ld_back = layer(x)  # the closed-form inverse
    torch.testing.assert_close(z_back, z, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ld_back, -ld, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("flow", [PlanarFlow(2, 3), RadialFlow(2, 3)])
def test_log_prob_of_a_sampling_direction_flow_is_one_clear_error(flow):
    x, log_q = flow.rsample_and_log_prob(5)
    assert x.shape == (5, 2) and torch.isfinite(log_q).all()
    with pytest.raises(NoDensityDirection, match="rsample_and_log_prob"):
        flow.log_prob(x.detach())


@pytest.mark.parametrize("kind", POSTERIORS)
def test_every_posterior_scores_its_own_samples(kind):
    """``log q`` from the sampling pass is the density (``log_prob`` where the flow has one; the
    density-direction flows of planar/radial layers where it is numerical)."""
    torch.manual_seed(0)
    q = build_posterior(kind, 2, length=2, hidden=8).double()
    x, log_q = q.rsample_and_log_prob(6)
    if kind in ("planar", "radial"):
        dense = (PlanarFlow if kind == "planar" else RadialFlow)(2, 2, density_direction=True).double()
        dense.load_state_dict(q.state_dict())
        q = dense
    torch.testing.assert_close(q.log_prob(x.detach()), log_q.detach(), rtol=1e-7, atol=1e-7)


def test_a_flow_without_a_sampling_direction_is_one_clear_error():
    class DensityOnly(Bijector):
        def forward(self, x):
            return x, x.new_zeros(x.shape[0])

    q = Flow(Sequential(DensityOnly()), event_shape=(2,))
    with pytest.raises(NoSamplingDirection, match="no sampling direction"):
        draw(q, 4)


# ------------------------------------------------------------------------ targets and bounds


def _gaussian_q(mean, std) -> GaussianPosterior:
    q = GaussianPosterior(len(mean)).double()
    with torch.no_grad():
        layer = q.bijector[0]
        layer.loc.copy_(torch.tensor(mean, dtype=D64))
        layer.log_scale.copy_(torch.tensor(std, dtype=D64).log())
    return q


def _gauss_kl(mq, sq, mp, sp) -> float:
    mq, sq, mp, sp = (torch.tensor(v, dtype=D64) for v in (mq, sq, mp, sp))
    return float((torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum())


def test_reverse_kl_estimator_is_unbiased_against_a_gaussian_target():
    mq, sq, mp, sp, log_z = [0.5, -1.0], [0.8, 1.5], [0.0, 0.3], [1.2, 0.7], 2.5
    q, target = _gaussian_q(mq, sq), Gaussian(mp, sp, log_z=log_z).double()
    exact = _gauss_kl(mq, sq, mp, sp)
    g = torch.Generator().manual_seed(0)
    r = estimate(q, checked(target), 200_000, log_z=log_z, generator=g)
    assert abs(r["kl"] - exact) < 4 * r["neg_elbo_stderr"], (r, exact)
    assert abs(r["kl"] - exact) < 0.02
    # the reparametrised gradient of the one-sample objective, averaged: ∂KL/∂μ_q analytic
    torch.manual_seed(1)
    _, log_q, log_p = log_weights(q, target, 200_000)
    (log_q - log_p).mean().backward()
    grad = q.bijector[0].loc.grad
    expected = (torch.tensor(mq, dtype=D64) - torch.tensor(mp, dtype=D64)) / torch.tensor(sp, dtype=D64) ** 2
    torch.testing.assert_close(grad, expected, rtol=0, atol=0.03)


def test_importance_weighted_bound_is_above_the_elbo_and_tends_to_log_z():
    log_z = 1.3
    q, target = _gaussian_q([0.2, 0.1], [1.5, 1.3]), Gaussian([0.0, 0.0], [1.0, 0.8], log_z=log_z).double()
    torch.manual_seed(0)
    with torch.no_grad():
        _, log_q, log_p = log_weights(q, target, 1 << 17)
    bounds = [float(importance_weighted_bound(log_p, log_q, s).mean()) for s in (1, 4, 64, 1024)]
    elbo = float((log_p - log_q).mean())
    assert bounds[0] == pytest.approx(elbo)
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False)), bounds
    assert all(b <= log_z + 1e-3 for b in bounds), bounds
    assert log_z - bounds[-1] < 0.01 < log_z - bounds[0], bounds


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_built_in_targets_have_finite_log_densities_and_a_known_or_quadrature_normaliser(name):
    t = get_target(name).double()
    z = torch.randn(50, t.dim, dtype=D64) * 2
    out = checked(t)(z)
    assert out.shape == (50,) and torch.isfinite(out).all()
    if t.log_z is not None and t.bounds is not None and name != "funnel":
        # the normalised ones integrate to 1 (the funnel's neck is narrower than a grid cell)
        assert log_normaliser(t, t.bounds, size=600, widen=1.6) == pytest.approx(t.log_z, abs=2e-3)


@pytest.mark.parametrize("bad, message", [
    (lambda z: torch.full((z.shape[0],), math.nan), "returned nan"),
    (lambda z: z.sum(dim=1, keepdim=True), r"shape \(8, 1\)"),
    (lambda z: z.sum(), r"shape \(\)"),
    (lambda z: [0.0] * z.shape[0], "returned list"),
    (lambda z: torch.zeros(z.shape[0], dtype=torch.long), "dtype"),
])
def test_a_bad_target_is_one_clear_error(bad, message):
    with pytest.raises(TargetError, match=message):
        checked(bad)(torch.randn(8, 2))


def test_minus_infinity_is_a_valid_log_density_and_plus_infinity_is_not():
    z = torch.randn(8, 2)
    assert checked(lambda z: torch.full((8,), -math.inf))(z).isinf().all()
    with pytest.raises(TargetError):
        checked(lambda z: torch.full((8,), math.inf))(z)


def test_annealing_schedule():
    obj = ReverseKL(get_target("u1"), anneal_steps=100)
    assert obj.beta(0) == pytest.approx(0.01)
    assert obj.beta(49) == pytest.approx(0.5)
    assert obj.beta(99) == pytest.approx(1.0) and obj.beta(10_000) == 1.0
    assert ReverseKL(get_target("u1")).beta(0) == 1.0


# ------------------------------------------------------------------------- fitting, the CLI


def test_fit_a_python_callable_target_reaches_the_known_kl(tmp_path):
    """A Gaussian posterior on a Gaussian target (any callable with a known normaliser):
    KL(q‖p) falls near 0; the bad-target check runs inside the trainer too."""
    torch.manual_seed(0)
    target = Gaussian([1.0, -2.0], [0.5, 2.0], log_z=-0.7)
    cfg = Config(epochs=2, batch_size=128, lr=0.05, l2=0.0, valid_size=0, device="cpu", sample_every=0)
    r = fit(cfg, tmp_path / "run", target, flow="gaussian", steps_per_epoch=100, eval_samples=2048,
            eval_particles=16, quiet=True, log=lambda *a, **k: None)
    assert r["kl"] < 0.05 and r["iw_bound"] <= -0.7 + 0.02
    with pytest.raises(TargetError, match="shape"):
        fit(cfg, tmp_path / "bad", lambda z: z, flow="gaussian", steps_per_epoch=2, quiet=True,
            log=lambda *a, **k: None)


def test_fit_a_plain_function_on_more_than_two_features_with_dim(tmp_path):
    """A plain function has no ``dim``: ``fit(..., dim=3)`` draws ``(B, 3)`` samples for it, and the
    fitted Gaussian reaches the normalised target (−ELBO ≈ KL ≈ 0); ``dim`` is recorded for resume.
    A ``dim`` that contradicts a target's, or is not a positive integer, is refused."""
    torch.manual_seed(0)
    widths = []

    def log_target(z):  # N(0, diag(1, 4, 0.25)), normalised
        widths.append(z.shape[1])
        std = torch.tensor([1.0, 2.0, 0.5])
        return -0.5 * (z / std).pow(2).sum(1) - std.log().sum() - 1.5 * math.log(2 * math.pi)

    cfg = Config(epochs=2, batch_size=128, lr=0.05, l2=0.0, valid_size=0, device="cpu", sample_every=0)
    r = fit(cfg, tmp_path / "run", log_target, dim=3, flow="gaussian", steps_per_epoch=100,
            eval_samples=2048, eval_particles=16, quiet=True, log=lambda *a, **k: None)
    assert set(widths) == {3}
    assert abs(r["neg_elbo"]) < 0.05
    assert json.loads((tmp_path / "run" / "fit.json").read_text())["dim"] == 3
    for bad, match in ((3, "2 features"), (0, "dim must be"), (2.0, "dim must be")):
        with pytest.raises(ValueError, match=match):
            fit(cfg, tmp_path / f"bad{bad}", Gaussian([0.0, 0.0], [1.0, 1.0]), dim=bad,
                flow="gaussian", steps_per_epoch=2, quiet=True, log=lambda *a, **k: None)
        assert not (tmp_path / f"bad{bad}").exists()


TINY = ("--target", "u1", "--flow", "planar", "--length", "3", "--steps-per-epoch", "15", "--epochs", "2",
        "--batch-size", "32", "--eval-samples", "256", "--eval-particles", "8", "--threads", "1", "--quiet")


def test_realnvp_fit_end_to_end_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, out, err = cli(capsys, "fit", *TINY, "--out", whole)
    assert code == 0, err
    assert "KL(q‖p)" in out
    for name in ("config.json", "fit.json", "metrics.csv", "eval.json", "samples.png",
                 "checkpoints/last.safetensors", "samples/epoch_0002.png"):
        assert (whole / name).exists(), name
    result = json.loads((whole / "eval.json").read_text())
    assert result["steps"] == 30 and math.isfinite(result["kl"]) and result["iw_samples"] == 8
    assert json.loads((whole / "fit.json").read_text())["length"] == 3

    code, out, err = cli(capsys, "fit", *TINY, "--out", parts, "--max-steps", "20")
    assert code == 0 and "continue with: realnvp fit --resume" in out, err
    code, out, err = cli(capsys, "fit", "--resume", parts, "--quiet")
    assert code == 0, err
    assert metrics_rows(parts) == metrics_rows(whole)
    assert json.loads((parts / "eval.json").read_text())["kl"] == pytest.approx(result["kl"], abs=1e-9)


def test_realnvp_fit_a_funnel_in_more_dimensions(tmp_path, capsys):
    """``--dim`` sets the funnel's dimension: the posterior, the recorded run and its samples
    have it, and the funnel's known normaliser gives KL(q‖p)."""
    import numpy as np

    run = tmp_path / "funnel"
    assert TINY[:4] == ("--target", "u1", "--flow", "planar")
    code, out, err = cli(capsys, "fit", "--target", "funnel", "--dim", "5", "--flow", "iaf", *TINY[4:],
                         "--out", run)
    assert code == 0, err
    assert json.loads((run / "fit.json").read_text())["dim"] == 5
    result = json.loads((run / "eval.json").read_text())
    assert result["log_z"] == 0.0 and math.isfinite(result["kl"]) and result["kl"] >= -0.5
    assert cli(capsys, "sample", run, "-n", "4", "-o", run / "q.npy")[0] == 0
    assert np.load(run / "q.npy").shape == (4, 5)
    assert not (run / "samples.png").exists()  # pictures are of 2-D targets only
    # resuming reads the dimension back
    code, _, err = cli(capsys, "fit", "--resume", run, "--epochs", "3", "--quiet")
    assert code == 0, err
    assert json.loads((run / "eval.json").read_text())["steps"] == 45


def test_get_target_dimensions():
    assert get_target("funnel", 7).dim == 7 and get_target("funnel").dim == 2
    assert get_target("u1", 2).dim == 2
    with pytest.raises(TargetError, match="not 3"):
        get_target("u2", 3)


def test_the_run_commands_on_a_fit_run(tmp_path, capsys):
    import numpy as np

    run = tmp_path / "fit"
    assert cli(capsys, "fit", *TINY, "--out", run)[0] == 0
    code, out, _ = cli(capsys, "info", run)
    assert code == 0 and "fitted posterior" in out and "KL(q‖p)" in out
    assert cli(capsys, "sample", run, "-n", "5", "-o", run / "q.npy")[0] == 0
    assert np.load(run / "q.npy").shape == (5, 2)
    assert cli(capsys, "sample", run, "-n", "50", "-o", run / "q.png")[0] == 0
    for command in (["eval", run], ["score", run, run / "q.npy"], ["interpolate", run],
                    ["latents", run, "-o", run / "scales.png"]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and "is a run of realnvp fit: it has no data" in one_line(err)


@pytest.mark.parametrize("argv, message", [
    (("--target", "u9"), "invalid choice"),
    (("--flow", "planar"), "choose a --target"),
    (("--target", "u1", "--flow", "iaf", "--particles", "3", "--batch-size", "32"), "multiple of particles"),
    (("--target", "u1", "--dim", "3"), "a density on 2 features, not 3"),
    (("--target", "funnel", "--dim", "1"), "needs dim >= 2"),
    (("--target", "funnel", "--dim", "0"), "--dim"),
])
def test_realnvp_fit_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    code, out, err = cli(capsys, "fit", *argv, "--out", tmp_path / "run", "--quiet")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
