"""Dequantizers (Flow++ §3.1): the learned q(u|x) is an exact density, its offsets stay in their
bins, and against the exact discrete likelihood of a model (quadrature over each bin) both bounds
hold and the importance-weighted estimate closes the gap."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from helpers import TINY_CPU, cli, metrics_rows, one_line
from realnvp.bijectors import Dequantize
from realnvp.models.dequantization import UniformDequantizer, VariationalDequantizer
from realnvp.models.flow import standard_normal_log_prob


def _dequantizer(shape, k=4, dtype=torch.float64, seed=0, amp=0.1):
    """A small dequantizer with its actnorms initialised and its zero-initialised parameters
    (the couplings' last convolutions, the elementwise shift) moved off zero, so that every
    layer does something."""
    torch.manual_seed(seed)
    q = VariationalDequantizer(shape, k, num_steps=2, hidden_channels=8, feature_channels=4).to(dtype)
    x = torch.randint(0, k, (6, *shape)).to(dtype)
    q.train()
    q.sample_and_log_prob(x)  # the actnorms' data-dependent initialisation
    with torch.no_grad():
        for p in q.parameters():
            if not p.any():
                p.add_(amp * torch.randn_like(p))
    return q, x


def _jacobian_log_q(q, x, eps):
    """log q(u|x) = log N(ε) − log|det ∂u/∂ε| per example, from autograd's Jacobian."""
    out = []
    for i in range(x.shape[0]):
        def u_of(e, i=i):
            z, _ = q._flow(x[i:i + 1], e.view(1, *x.shape[1:]), inverse=False)
            return torch.sigmoid(z).flatten()

        jac = torch.autograd.functional.jacobian(u_of, eps[i].flatten())
        out.append(standard_normal_log_prob(eps[i].view(1, -1)) - torch.linalg.slogdet(jac)[1])
    return torch.cat(out)


@pytest.mark.parametrize("shape", [(1, 2, 2), (2, 1, 2), (1, 1, 1), (1, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_log_q_is_the_log_density_of_u_by_the_autograd_jacobian(shape, dtype, training):
    q, x = _dequantizer(shape, dtype=dtype)
    q.train(training)
    torch.manual_seed(1)
    u, log_q = q.sample_and_log_prob(x)
    torch.manual_seed(1)
    eps = torch.randn_like(x)
    # the reference in float64 (float32's autograd of sigmoid loses 1 − u to cancellation)
    ref = _jacobian_log_q(copy.deepcopy(q).double(), x.double(), eps.double())
    atol = 1e-9 if dtype == torch.float64 else 5e-3
    torch.testing.assert_close(log_q.double(), ref, atol=atol, rtol=1e-5)
    # the density direction gives the same number for the same u
    torch.testing.assert_close(q.log_prob(u, x), log_q, atol=atol * 10, rtol=0)


def test_a_wrong_sigmoid_log_det_fails_the_jacobian_check():
    """Negative control: leaving out the sigmoid's log-det must be caught."""
    q, x = _dequantizer((1, 2, 2))
    torch.manual_seed(1)
    _, log_q = q.sample_and_log_prob(x)
    torch.manual_seed(1)
    eps = torch.randn_like(x)
    z, log_det = q._flow(x, eps, inverse=False)
    without = standard_normal_log_prob(eps.flatten(1)) - log_det
    ref = _jacobian_log_q(q, x, eps)
    assert (without - ref).abs().max() > 0.1 and (log_q - ref).abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_u_stays_in_the_unit_interval_and_y_in_the_bin_of_x(dtype):
    k = 17
    q, _ = _dequantizer((1, 4, 4), k=k, dtype=dtype)
    with torch.no_grad():  # a scale of e^6 ≈ 400: most z are far out where sigmoid rounds to 0 or 1
        q.flow[0].log_scale.fill_(-6.0)
    x = torch.randint(0, k, (64, 1, 4, 4)).to(dtype)
    x[0], x[1] = 0, k - 1
    u, log_q = q.sample_and_log_prob(x)
    assert u.min() >= 0 and u.max() < 1 and bool(torch.isfinite(log_q).all())
    assert bool((u == torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype))).any())
    y, _ = Dequantize(k)(x, noise=u)
    assert y.max() < 1 and torch.equal(torch.floor(y * k), x)


def test_the_uniform_dequantizer_draws_what_dequantize_draws():
    x = torch.randint(0, 4, (5, 1, 3, 3)).float()
    torch.manual_seed(3)
    u, log_q = UniformDequantizer(4).sample_and_log_prob(x)
    torch.manual_seed(3)
    y, _ = Dequantize(4)(x)
    assert torch.equal(y, Dequantize(4)(x, noise=u)[0]) and torch.equal(log_q, torch.zeros(5))
    # sharded: rows rank::world of the global batch's noise, for either dequantizer
    torch.manual_seed(3)
    whole, _ = UniformDequantizer(4).sample_and_log_prob(torch.cat([x, x]))
    torch.manual_seed(3)
    part, _ = UniformDequantizer(4).sample_and_log_prob(x, shard=(1, 2))
    assert torch.equal(part, whole[1::2])


def test_bad_input_is_refused_in_one_line():
    q = VariationalDequantizer((1, 2, 2), 4, num_steps=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 2, 2\)"):
        q.sample_and_log_prob(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="takes .C, H, W. images"):
        VariationalDequantizer((4,), 4)


# --- the bounds against the exact discrete likelihood --------------------------------------------

def _density(d: int, k: int):
    """A normalised density on [0, 1)^d (d = 1 or 2) that varies strongly inside each of the k^d
    bins (a uniform dequantizer cannot follow it) and across them, as ``log p(y)`` of
    ``(B, 1, 1, d)``; and the exact ``log P(x)`` of every bin by midpoint quadrature."""
    def unnormalised(y):  # (..., d)
        f = (1 + 0.9 * torch.sin(2 * math.pi * k * y[..., 0] + 3 * y[..., -1])) * torch.exp(y[..., 0])
        if d == 2:
            f = f * (1 + 0.6 * torch.cos(2 * math.pi * k * y[..., 1])) * (1 + y[..., 0] * y[..., 1])
        return f

    m = 4000 if d == 1 else 300  # quadrature points per bin and dimension
    t = (torch.arange(k * m, dtype=torch.float64) + 0.5) / (k * m)
    grid = t.view(-1, 1) if d == 1 else torch.stack(torch.meshgrid(t, t, indexing="ij"), -1)
    f = unnormalised(grid)
    log_z = math.log(f.mean().item())
    bins = f.view(k, m) if d == 1 else f.view(k, m, k, m).permute(0, 2, 1, 3).reshape(k, k, m * m)
    log_bin = torch.log(bins.mean(-1)) - log_z + (-d * math.log(k))  # log ∫_bin p(y) dy
    # the uniform bound exactly: E_{u ~ U}[log p((x + u)/K)] − d ln K, by the same quadrature
    uniform = torch.log(bins).mean(-1) - log_z - d * math.log(k)

    def log_p(y):
        return torch.log(unnormalised(y.flatten(1))) - log_z

    return log_p, log_bin.flatten(), uniform.flatten()


def _all_levels(d: int, k: int) -> torch.Tensor:
    levels = torch.cartesian_prod(*[torch.arange(k)] * d) if d > 1 else torch.arange(k)
    return levels.to(torch.float64).view(-1, 1, 1, d)


def _bounds(q, log_p, x, k, draws):
    """(B, draws) bounds log p(y) − d ln K − log q(u|x) for fresh u ~ q."""
    d = x[0].numel()
    xs = x.repeat_interleave(draws, dim=0)
    u, log_q = q.sample_and_log_prob(xs)
    y, _ = Dequantize(k)(xs, noise=u)
    return (log_p(y) - d * math.log(k) - log_q).view(x.shape[0], draws)


@pytest.mark.parametrize("d, k", [(1, 4), (2, 3)])
def test_the_learned_bound_tightens_and_importance_weighting_reaches_log_p(d, k):
    torch.manual_seed(0)
    log_p, exact, uniform = _density(d, k)
    x = _all_levels(d, k)
    q = VariationalDequantizer((1, 1, d), k, num_steps=2, hidden_channels=16, feature_channels=8).double()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(300):
        loss = -_bounds(q, log_p, x, k, 16).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        b = _bounds(q, log_p, x, k, 20000)
        bound, stderr = b.mean(1), b.std(1) / math.sqrt(b.shape[1])
        # Jensen, for every x: the variational and the uniform bound are below log P(x)
        assert bool((bound <= exact + 4 * stderr).all()), (bound - exact, stderr)
        assert bool((uniform <= exact).all())
        # learning pays: the variational bound is well above the uniform one on average
        assert (bound - uniform).mean() > 0.05, (bound.mean(), uniform.mean())
        # importance weighting over S draws: the mean estimate rises towards log P(x) with S
        gaps = []
        for s in (1, 10, 100, 2000):
            draws = b[:, : (20000 // s) * s].reshape(x.shape[0], -1, s)
            iw = torch.logsumexp(draws, -1) - math.log(s)
            gaps.append((exact - iw.mean(1)).mean().item())
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3] - 1e-3 and abs(gaps[3]) < 5e-3, gaps


# --- training runs -----------------------------------------------------------------------------

VARIATIONAL = [*TINY_CPU, "--dequantization", "variational", "--set", "dequant_hidden=4",
               "--set", "dequant_steps=1", "--set", "threads=1"]


def test_train_eval_score_and_exact_resume_with_a_learned_dequantizer(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", run, "--epochs", "2", *VARIATIONAL)[0] == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["dequantization"] == "variational"
    for key in ("bits_per_dim", "importance_weighted_bpd", "uniform_bits_per_dim",
                "uniform_importance_weighted_bpd"):
        assert math.isfinite(result[key]), key
    resumed = tmp_path / "resumed"
    assert cli(capsys, "train", "--out", resumed, "--epochs", "2", "--max-steps", "30", *VARIATIONAL)[0] == 0
    assert cli(capsys, "train", "--resume", resumed, "--quiet")[0] == 0
    assert metrics_rows(resumed) == metrics_rows(run)
    assert json.loads((resumed / "eval.json").read_text())["bits_per_dim"] == result["bits_per_dim"]
    code, out, _ = cli(capsys, "eval", run, "--dequant-samples", "2")
    assert code == 0 and "variational dequantization" in out and "uniform dequantization" in out
    assert cli(capsys, "sample", run, "-n", "3", "-o", run / "s.npy")[0] == 0
    assert cli(capsys, "score", run, run / "s.npy", "-o", run / "scores.csv")[0] == 0


@pytest.mark.parametrize("model", [
    ["--set", "model=glow", "--set", "num_scales=2", "--set", "steps_per_level=1"],
    ["--set", "model=ffjord", "--set", "num_scales=1", "--set", "num_layers=1",
     "--set", "ode_rtol=1e-3", "--set", "ode_atol=1e-3"],
])
def test_a_learned_dequantizer_trains_every_image_model(capsys, tmp_path, model):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--out", run, "--max-steps", "3", *VARIATIONAL, *model)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert result["dequantization"] == "variational"
    assert math.isfinite(result["bits_per_dim"]) and math.isfinite(result["uniform_bits_per_dim"])
    code, out, _ = cli(capsys, "eval", run, "--dequant-samples", "1")
    assert code == 0 and "variational dequantization" in out


@pytest.mark.parametrize("extra", [["--precision", "bf16"], ["--set", "ema_decay=0.9"]])
def test_a_learned_dequantizer_trains_with_bf16_and_ema(capsys, tmp_path, extra):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--out", run, "--max-steps", "5", *VARIATIONAL, *extra)
    assert code == 0, err
    assert math.isfinite(json.loads((run / "eval.json").read_text())["bits_per_dim"])


def test_memory_saving_gives_the_dequantizer_the_same_gradients():
    """With a learned q the model's input carries a gradient: memory-saving backprop must pass
    it back through the recomputed layers to the dequantizer."""
    from realnvp import RealNVP

    grads = []
    for saving in (False, True):
        torch.manual_seed(0)
        model = RealNVP((1, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1).double()
        model.memory_saving_(saving)
        q, x = _dequantizer((1, 4, 4), k=4)
        torch.manual_seed(5)
        u, log_q = q.sample_and_log_prob(x)
        y, _ = Dequantize(4)(x, noise=u)
        (model.log_prob(y) - log_q).sum().backward()
        grads.append([p.grad.clone() for p in q.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_variational_dequantization_of_continuous_data_is_refused(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "r", "--data", "toy:moons",
                       "--dequantization", "variational", "--quiet", "--max-steps", "1")
    assert code == 2 and "variational dequantization is for discrete" in one_line(err)
    code, _, err = cli(capsys, "train", "--out", tmp_path / "r2", "--dequantization", "learned")
    assert code == 2 and "learned" in one_line(err)
