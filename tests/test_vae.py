"""The VAE with flow posteriors (issue 17, R&M §6.2): bounds against quadrature of the exact
``log p(x)``, per-example flow log-dets against autograd, the estimators, dynamic binarisation,
the run (resume equals an uninterrupted run) and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import cli, jacobian_log_dets, metrics_rows, one_line, write_mnist
from realnvp.vi.vae import POSTERIORS, VAE, binarize, bounds, planar_step, radial_step

TINY_LATENT = {"gaussian": 1, "planar": 1, "radial": 1, "iaf": 1, "realnvp": 2}


def tiny_vae(kind: str, seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    vae = VAE(features=4, latent=TINY_LATENT[kind], posterior=kind, length=3, hidden=6,
              flow_hidden=4, **kw).double()
    with torch.no_grad():  # away from the initialisation: flows that are not near the identity
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae


def exact_log_px(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """``log ∫ p(x, z) dz`` by a Riemann sum on a grid over ``[−9, 9]^d`` (d = 1 or 2): ``(B,)``."""
    d = vae.latent
    n = 20001 if d == 1 else 601
    axis = torch.linspace(-9, 9, n, dtype=torch.float64)
    grid = axis[:, None] if d == 1 else torch.cartesian_prod(axis, axis)
    cell = math.log(18 / (n - 1)) * d
    with torch.no_grad():
        return torch.stack([torch.logsumexp(vae.log_joint(xi.expand(len(grid), -1), grid), 0) + cell
                            for xi in x])


@pytest.mark.parametrize("kind", POSTERIORS)
def test_elbo_below_iw_below_exact_log_px(kind):
    vae = tiny_vae(kind)
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.float64)
    exact = exact_log_px(vae, x)
    with torch.no_grad():
        log_w = vae.log_weights(x, 20000, generator=torch.Generator().manual_seed(1))
    elbo, iw = log_w.mean(1), torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])
    w = (log_w - iw[:, None]).exp()  # weights relative to their mean: the delta-method error of iw
    stderr = w.std(1) / math.sqrt(log_w.shape[1])
    assert torch.all(elbo <= iw)  # Jensen on the same draws
    assert torch.all(elbo < exact - 1e-3)  # the gap is KL(q(z|x) ‖ p(z|x)) > 0 for a random q
    assert torch.all((iw - exact).abs() <= 4 * stderr + 1e-4)  # S = 20000: log p(x) to its error
    # the bound itself, E[iw_S] <= log p(x), on groups of S = 10: below exact, above the ELBO
    iw10 = (torch.logsumexp(log_w.reshape(3, -1, 10), 2) - math.log(10)).mean(1)
    assert torch.all(elbo < iw10) and torch.all(iw10 < exact)


@pytest.mark.parametrize("kind", [*POSTERIORS, "gated iaf"])
def test_posterior_log_dets_against_autograd(kind):
    gated = kind == "gated iaf"
    vae = tiny_vae("iaf", seed=3, iaf_transformer="gated") if gated else tiny_vae(kind, seed=3)
    torch.manual_seed(4)
    x = torch.randint(0, 2, (5, 4)).double()
    _, _, rest = vae.encode(x)
    rest = rest.detach()
    z0 = torch.randn(5, vae.latent, dtype=torch.float64)
    _, log_det = vae.transform(z0, rest)
    expected = jacobian_log_dets(lambda z: vae.transform(z, rest)[0], z0)
    torch.testing.assert_close(log_det, expected, atol=1e-10, rtol=0)


def test_per_example_planar_and_radial_layers_in_higher_dimension():
    torch.manual_seed(5)
    b, d = 6, 5
    z = torch.randn(b, d, dtype=torch.float64)
    u, w, z0 = (torch.randn(b, d, dtype=torch.float64) for _ in range(3))
    s, t, c = (torch.randn(b, dtype=torch.float64) for _ in range(3))
    for fn in (lambda v: planar_step(v, u, w, s), lambda v: radial_step(v, z0, t, c)):
        torch.testing.assert_close(fn(z)[1], jacobian_log_dets(lambda v, fn=fn: fn(v)[0], z),
                                   atol=1e-10, rtol=0)
    # wᵀû > −1 for any raw u, w: the planar map stays invertible (log-det finite)
    _, ld = planar_step(z, -10 * w, w, s)
    assert torch.isfinite(ld).all()
    # radial: raw β far below −α (invertibility violated before the reparametrisation)
    big = torch.full((b,), -30.0, dtype=torch.float64)
    fn = lambda v: radial_step(v, z0, t, big)  # noqa: E731
    _, ld = fn(z)
    assert torch.isfinite(ld).all()
    torch.testing.assert_close(ld, jacobian_log_dets(lambda v: fn(v)[0], z), atol=1e-8, rtol=0)


def test_iw_with_one_draw_is_the_elbo_of_that_draw():
    vae = tiny_vae("planar")
    x = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.float64)
    elbo, iw = bounds(vae, x, 1, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(elbo, iw, atol=0, rtol=0)
    with torch.no_grad():
        direct = vae.log_weights(x, 1, generator=torch.Generator().manual_seed(9))[:, 0]
    torch.testing.assert_close(elbo, direct, atol=1e-12, rtol=0)


def test_rm_annealing_schedule():
    from realnvp.vi.bounds import annealed_beta

    assert [annealed_beta(t, 10_000) for t in (0, 5000, 9900, 10_000, 50_000)] == [0.01, 0.51, 1.0, 1.0, 1.0]
    assert annealed_beta(0, 0) == annealed_beta(123, 0) == 1.0  # no annealing


@pytest.mark.parametrize("step", [0, 50, 100, 300])
def test_annealed_loss_weights_the_joint_and_reports_the_plain_negative_elbo(step):
    """R&M §6: the training loss is ``E_q[log q(z|x) − β_t·log p(x, z)]``, ``β_t = min(1, 0.01 +
    t/anneal_steps)``; the reported figure is the un-annealed negative ELBO of the same draws."""
    from types import SimpleNamespace

    from realnvp.data import DataInfo
    from realnvp.training.vae import NegativeELBO

    vae = tiny_vae("planar").float()  # as trained: float32 pixels
    info = DataInfo(name="tiny", kind="image", shape=(1, 2, 2), num_levels=2)
    ctx = SimpleNamespace(net=vae, state=SimpleNamespace(step=step), data=SimpleNamespace(info=info),
                          device=torch.device("cpu"))
    levels = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 0]]).reshape(3, 1, 2, 2)
    torch.manual_seed(5)
    loss, reported = NegativeELBO(anneal_steps=100).loss(ctx, levels)
    torch.manual_seed(5)
    x = binarize(levels.reshape(3, 4), 2)
    log_p, log_q = vae.log_densities(x, 1)
    beta = min(1.0, 0.01 + step / 100)
    torch.testing.assert_close(loss, -(beta * log_p - log_q).mean())
    torch.testing.assert_close(reported, (log_q - log_p).mean())
    assert (abs(float(loss.detach() - reported)) > 1e-3) == (beta < 1)  # the weight matters until it is 1
    with pytest.raises(ValueError, match="anneal_steps must be an integer >= 0"):
        NegativeELBO(anneal_steps=-1)


def test_dynamic_binarisation_is_bernoulli_with_the_level_as_mean():
    levels = torch.arange(17, dtype=torch.uint8).repeat(20000, 1)
    draws = binarize(levels, 17, generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = torch.arange(17) / 16
    torch.testing.assert_close(draws.mean(0).double(), p.double(), atol=4 * 0.5 / 20000 ** 0.5, rtol=0)
    again = binarize(levels[:4], 17, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again, draws[:4])  # fresh draws each call


TINY_RUN = ("--data", "digits", "--posterior", "planar", "--length", "2", "--latent", "3",
            "--hidden", "16", "--epochs", "2", "--batch-size", "64", "--iw-samples", "20",
            "--threads", "1", "--quiet")


def test_realnvp_vae_run_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    annealed = ("--anneal-steps", "40")  # β still rising at the interruption (step 30)
    code, out, err = cli(capsys, "vae", *TINY_RUN, *annealed, "--out", whole)
    assert code == 0, err
    assert "-log p(x)" in out
    for name in ("config.json", "vae.json", "metrics.csv", "eval.json", "checkpoints/last.safetensors"):
        assert (whole / name).exists(), name
    result = json.loads((whole / "eval.json").read_text())
    assert result["iw_samples"] == 20 and result["nll_iw"] <= result["neg_elbo"]
    spec = json.loads((whole / "vae.json").read_text())
    assert spec["posterior"] == "planar" and spec["anneal_steps"] == 40
    _the_run_commands_on_a_vae_run(whole, capsys)

    code, out, err = cli(capsys, "vae", *TINY_RUN, *annealed, "--out", parts,
                         "--max-steps", "30")  # mid-epoch 2
    assert code == 0 and "continue with: realnvp vae --resume" in out, err
    code, out, err = cli(capsys, "vae", "--resume", parts, "--quiet")
    assert code == 0, err
    assert metrics_rows(parts) == metrics_rows(whole)
    again = json.loads((parts / "eval.json").read_text())
    assert again["nll_iw"] == pytest.approx(result["nll_iw"], abs=1e-9)
    assert again["neg_elbo"] == pytest.approx(result["neg_elbo"], abs=1e-9)


def _the_run_commands_on_a_vae_run(run, capsys):
    """info shows the VAE and its figures; sample decodes prior draws (the decoder's Bernoulli
    means, reproducible by seed); the commands that need a flow's density refuse in one line."""
    import numpy as np

    code, out, err = cli(capsys, "info", run)
    assert code == 0, err
    assert "VAE with a planar posterior of 2 layers, latent 3" in out and "-log p(x)" in out
    for name in ("a.npy", "b.npy"):
        code, out, err = cli(capsys, "sample", run, "-n", "5", "--seed", "3", "-o", run / name)
        assert code == 0 and "prior draws at temperature 1.0" in out, err
    means = np.load(run / "a.npy")
    assert means.shape == (5, 1, 8, 8) and means.min() >= 0 and means.max() <= 1
    assert np.array_equal(means, np.load(run / "b.npy"))
    assert cli(capsys, "sample", run, "-n", "4", "-o", run / "s.png")[0] == 0
    assert (run / "s.png").stat().st_size > 0
    code, _, err = cli(capsys, "sample", run, "-n", "4", "--label", "3", "-o", run / "l.png")
    assert code == 2 and "unconditional" in one_line(err) and not (run / "l.png").exists()
    for command in (["eval", run], ["score", run, run / "a.npy"], ["interpolate", run, "-o", run / "i.png"],
                    ["latents", run, "-o", run / "l.png"], ["export", run, "-o", run / "m.onnx"],
                    ["export", run, "-o", run / "exported"]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and "is a run of realnvp vae" in one_line(err), command
    assert not any((run / name).exists() for name in ("i.png", "l.png", "m.onnx", "exported"))


@pytest.mark.parametrize("argv, message", [
    (("--posterior", "bogus"), "unknown posterior 'bogus'"),
    (("--posterior", "planar", "--length", "0"), "needs length >= 1"),
    (("--posterior", "realnvp", "--latent", "1"), "needs latent >= 2"),
    (("--data", "toy:moons"), "needs an image data set"),
    (("--data", "nonsense"), "unknown data set"),
    (("--posterior", "iaf", "--iaf-transformer", "bogus"), "unknown IAF transformer 'bogus'"),
    (("--anneal-steps", "-5"), "anneal_steps must be an integer >= 0, got -5"),
    ((), "give the run directory"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = () if argv == () else ("--out", tmp_path / "run")
    code, _, err = cli(capsys, "vae", "--data", "digits", "--threads", "1", *argv, *out)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_the_mnist_recipe_reads():
    from realnvp.cli.vae import read_recipe

    cfg, spec = read_recipe("vae-mnist")
    assert cfg.data == "mnist" and cfg.batch_size == 100
    assert spec == dict(posterior="planar", length=80, latent=40, hidden=400, flow_hidden=320,
                        iw_samples=5000, iaf_transformer="affine", anneal_steps=10_000)


def test_the_mnist_recipe_runs_on_mnist_files(tmp_path, capsys):
    """R&M's recipe end to end on MNIST in its real files (random images, 120 training and 10
    test): two steps on the CPU with its architecture, annealing and validation split; only the
    device, the steps and the test's S are cut."""
    data, run = write_mnist(tmp_path / "mnist", 120, 10), tmp_path / "run"
    code, out, err = cli(capsys, "vae", "--config", "vae-mnist", "--data-dir", data, "--device", "cpu",
                         "--max-steps", "2", "--iw-samples", "3", "--quiet", "--out", run)
    assert code == 0 and "mnist: 108 train / 12 valid" in out, err
    spec = json.loads((run / "vae.json").read_text())
    recipe = (spec["posterior"], spec["length"], spec["latent"], spec["anneal_steps"])
    assert recipe == ("planar", 80, 40, 10_000)
    result = json.loads((run / "eval.json").read_text())
    assert result["num_images"] == 10 and result["iw_samples"] == 3 and result["steps"] == 2
    assert math.isfinite(result["neg_elbo"]) and math.isfinite(result["nll_iw"])


def test_runs_from_before_the_iaf_transformer_choice_read_as_affine(tmp_path):
    """A ``vae.json`` without ``iaf_transformer`` was written when the IAF was affine: it is read
    back as affine, so its checkpoint (with the affine layers' ``rescale``) loads; without
    ``anneal_steps``, when there was no annealing."""
    from realnvp.training.vae import read_spec

    (tmp_path / "vae.json").write_text(json.dumps(dict(posterior="iaf", length=2, latent=3, hidden=8,
                                                       flow_hidden=8, iw_samples=10)))
    assert read_spec(tmp_path)["iaf_transformer"] == "affine"
    assert read_spec(tmp_path)["anneal_steps"] == 0  # nor annealing
    (tmp_path / "vae.json").write_text(json.dumps(dict(posterior="iaf", iaf_transformer="gated")))
    assert read_spec(tmp_path)["iaf_transformer"] == "gated"
    assert "rescale" in "".join(VAE(4, 3, "iaf", 2, 8, 8, "affine").state_dict())
    assert "rescale" not in "".join(VAE(4, 3, "iaf", 2, 8, 8, "gated").state_dict())
