"""The MADE MoG base density and MAF MoG (Papamakarios et al., 2017): the mixture's density
against torch.distributions, normalisation by quadrature, samples that follow the density (the
D-pass sampler keeps its noise across passes), the refusals (no reparametrised samples, no IAF),
and the model through the configuration and every command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import distributions as D

from helpers import cli, one_line, perturb
from realnvp import IAF, MAF, NSFAutoregressive
from realnvp.config import Config, ConfigError
from realnvp.data import DataInfo
from realnvp.models.build import build_model
from realnvp.models.mog import MADEMoG


def mog(dim=2, components=3, seed=0, order=None, context=None) -> MADEMoG:
    torch.manual_seed(seed)
    return perturb(MADEMoG(dim, components, hidden=8, order=order, context=context), 0.25, seed).double()


def grid(half: float = 12.0, n: int = 801) -> tuple[torch.Tensor, float]:
    a = torch.linspace(-half, half, n, dtype=torch.float64)
    return torch.cartesian_prod(a, a), float(a[1] - a[0]) ** 2


@pytest.mark.parametrize("order", [None, torch.tensor([2, 1, 3])])
def test_log_prob_is_the_product_of_mixture_conditionals(order):
    """Each feature's conditional is torch's ``MixtureSameFamily(Categorical, Normal)`` at the
    MADE's outputs for that feature: the softmax weights, the means, ``exp`` of the log-scales."""
    base = mog(dim=3, order=order)
    u = torch.randn(7, 3, dtype=torch.float64)
    h = base.made(u)
    c = base.components
    mixture = D.MixtureSameFamily(D.Categorical(logits=h[..., :c]),
                                  D.Normal(h[..., c:2 * c], h[..., 2 * c:].clamp(-7, 5).exp()))
    expected = mixture.log_prob(u).sum(1)
    torch.testing.assert_close(base.log_prob(u), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("order", [None, torch.tensor([2, 1])])
def test_the_density_integrates_to_one(order):
    base = mog(order=order)
    g, cell = grid()
    with torch.no_grad():
        total = float(base.log_prob(g).exp().sum()) * cell
    assert total == pytest.approx(1.0, abs=1e-4)


def fitted_mog() -> MADEMoG:
    """A MADE MoG fitted for 300 steps to the two moons: strongly dependent features."""
    from realnvp.data.toy import sample_toy

    torch.manual_seed(0)
    base = MADEMoG(2, 5, hidden=16).double()
    x = torch.from_numpy(sample_toy("moons", 4000, 0, "train")).double()
    opt = torch.optim.Adam(base.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (-base.log_prob(x).mean()).backward()
        opt.step()
    return base


def test_samples_follow_the_density():
    """Counts of 40,000 draws in a 12×12 grid of bins on [−4.5, 4.5]² against the quadrature
    probabilities of the bins, within 5 standard deviations. The density is dependent enough
    that the product of its marginals (what a sampler drawing each feature given an independent
    copy of its parents, e.g. with fresh noise every pass, produces) is far outside that band in
    some bin."""
    base = fitted_mog()
    edges = torch.linspace(-4.5, 4.5, 13, dtype=torch.float64)
    g, cell = grid(half=4.5, n=901)
    with torch.no_grad():
        p = (base.log_prob(g).exp() * cell).reshape(901, 901)
        s = base.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert float(p.sum()) > 0.99  # nearly all the mass is in the window
    axis = g[:901, 1].contiguous()
    which = torch.bucketize(axis, edges[1:-1])  # each grid line's bin
    expected = torch.zeros(12, 12, dtype=torch.float64).index_put_((which[:, None], which[None, :]), p,
                                                                   accumulate=True) * len(s)
    product = expected.sum(1, keepdim=True) * expected.sum(0, keepdim=True) / len(s)
    counts = torch.zeros(12, 12, dtype=torch.float64)
    inside = ((s > -4.5) & (s < 4.5)).all(1)
    bins = [torch.bucketize(s[inside, i].contiguous(), edges[1:-1]) for i in (0, 1)]
    counts.index_put_(tuple(bins), torch.ones(int(inside.sum()), dtype=torch.float64), accumulate=True)
    band = 5 * expected.clamp_min(1).sqrt()
    assert ((counts - expected).abs() <= band + 1).all(), (counts - expected).abs().max()
    assert ((product - expected).abs() > 4 * band).any()  # the test can tell a broken sampler
    with torch.no_grad():
        cold = base.sample(5, generator=torch.Generator().manual_seed(1), temperature=0.0)
        _, mu, _ = base.parameters_of(cold)
    assert torch.isclose(mu, cold.unsqueeze(-1), atol=1e-12, rtol=0).any(-1).all()  # at T = 0: means
    assert base.sample(4, generator=torch.Generator().manual_seed(3)).equal(
        base.sample(4, generator=torch.Generator().manual_seed(3)))  # the generator decides


def test_maf_mog_is_the_base_density_of_the_maf_latent():
    torch.manual_seed(0)
    model = perturb(MAF(2, num_layers=2, hidden=8, mog_components=4), 0.3).double().eval()
    x = torch.randn(6, 2, dtype=torch.float64)
    z, log_det = model.bijector(x)
    torch.testing.assert_close(model.log_prob(x), model.base.log_prob(z) + log_det, atol=1e-12, rtol=0)
    assert not torch.allclose(model.log_prob(x), MAF(2, num_layers=2, hidden=8).double().log_prob(x))
    g, cell = grid(half=14.0, n=701)
    with torch.no_grad():
        assert float(model.log_prob(g).exp().sum()) * cell == pytest.approx(1.0, abs=1e-3)
        x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 2) and torch.isfinite(x).all()
    assert model.base.made.order.tolist() == [1, 2]  # the order after the layers' [1, 2], [2, 1]
    (-model.log_prob(torch.randn(8, 2, dtype=torch.float64)).mean()).backward()
    assert all(p.grad is not None for p in model.base.parameters())


def test_a_conditional_maf_mog_conditions_its_base():
    torch.manual_seed(0)
    model = perturb(MAF(2, num_layers=1, hidden=8, mog_components=3, context_features=2), 0.5).double()
    assert model.base.context is model.context_slot
    model.eval()
    g, cell = grid(half=14.0, n=601)
    c = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    with torch.no_grad():
        total = float(model.log_prob(g, c.expand(len(g), 2)).exp().sum()) * cell
        a = model.log_prob(g[:5], c.expand(5, 2))
        b = model.log_prob(g[:5], -c.expand(5, 2))
        s = model.sample(3, context=c[0])
    assert total == pytest.approx(1.0, abs=1e-3) and not torch.allclose(a, b) and s.shape == (3, 2)


def test_refusals():
    model = MAF(2, num_layers=1, hidden=8, mog_components=2)
    with pytest.raises(NotImplementedError, match="no reparametrised samples"):
        model.rsample(3)
    with pytest.raises(NotImplementedError, match="no reparametrised samples"):
        model.rsample_and_log_prob(3)
    with pytest.raises(ValueError, match="an IAF samples through its base"):
        IAF(2, mog_components=2)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="mog_components must be an integer >= 0"):
            MAF(2, mog_components=bad)
    with pytest.raises(ValueError, match="components >= 1"):
        MADEMoG(2, 0)
    from realnvp.vi.bounds import NoSamplingDirection, draw

    with pytest.raises(NoSamplingDirection, match="no reparametrised samples"):
        draw(model, 4)  # not a variational posterior


def test_the_configuration_builds_maf_mog_and_refuses_it_elsewhere():
    info = DataInfo("toy:moons", "vector", (2,), None)
    model = build_model(Config(model="nsf-autoregressive", mog_components=5, hidden=8), info)
    assert isinstance(model, NSFAutoregressive) and model.base.components == 5
    assert model.config["mog_components"] == 5
    assert build_model(Config(model="maf", hidden=8), info).base is None
    with pytest.raises(ConfigError, match="MoG base is for model maf or nsf-autoregressive, not realnvp"):
        build_model(Config(model="realnvp", mog_components=5), info)
    with pytest.raises(ConfigError, match="an IAF samples through its base"):
        build_model(Config(model="iaf", mog_components=5), info)
    with pytest.raises(ConfigError, match="mog_components"):
        Config().replace(mog_components=-2)


def test_every_command_for_maf_mog(capsys, tmp_path):
    run = tmp_path / "run"
    common = ["--quiet", "--device", "cpu", "--epochs", "1", "--max-steps", "3", "--set", "num_samples=4",
              "--set", "hidden=8", "--set", "num_couplings=2", "--set", "eval_dequant_samples=1",
              "--set", "threads=1", "--set", "toy_train_size=2000", "--set", "valid_size=200"]
    code, _, err = cli(capsys, "train", "--data", "toy:moons", "--model", "maf", "--set", "mog_components=3",
                       "--out", run, *common)
    assert code == 0, err
    code, _, err = cli(capsys, "eval", run, "--json", run / "e.json")
    assert code == 0, err
    assert cli(capsys, "sample", run, "-n", "3", "-o", run / "s.npy")[0] == 0
    assert np.load(run / "s.npy").shape == (3, 2)
    assert cli(capsys, "score", run, run / "s.npy", "-o", run / "scores.csv")[0] == 0
    code, _, err = cli(capsys, "train", "--data", "toy:moons", "--model", "realnvp",
                       "--set", "mog_components=3", "--out", tmp_path / "bad", *common)
    assert code == 2 and "a MADE MoG base is for model maf" in one_line(err)
    assert not (tmp_path / "bad").exists()
