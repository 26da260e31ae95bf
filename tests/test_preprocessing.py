"""Dequantization, the logit transform and bits/dim: densities integrate to one and the
reported bits/dim matches closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import perturb
from realnvp import VectorRealNVP, bits_per_dim
from realnvp.bijectors import ActNorm, Dequantize, Logit, Sequential
from realnvp.models import Flow


def logit_domain(alpha):
    m = alpha / (1 - 2 * alpha)
    return -m, 1 + m


def test_one_dimensional_density_integrates_to_one():
    alpha = 0.05
    an = ActNorm(1)
    with torch.no_grad():
        an.bias.fill_(0.7)
        an.log_scale.fill_(-0.4)
        an.initialized.fill_(True)
    flow = Flow(Sequential(Logit(alpha), an), (1,), support=logit_domain(alpha)).double().eval()
    lo, hi = logit_domain(alpha)
    y = torch.linspace(lo, hi, 400_001, dtype=torch.float64)[1:-1].unsqueeze(1)
    with torch.no_grad():
        p = flow.log_prob(y).exp().numpy()
    total = np.trapezoid(p, y[:, 0].numpy())
    assert abs(total - 1) < 1e-3
    # On [0, 1] alone the mass is below one: the logit with alpha > 0 leaves a margin, so the
    # reported likelihood of data in [0, 1] is conservative, never inflated.
    inside = (y[:, 0] >= 0) & (y[:, 0] <= 1)
    assert np.trapezoid(p[inside.numpy()], y[inside, 0].numpy()) < 1


def test_two_dimensional_density_integrates_to_one():
    torch.manual_seed(0)
    alpha = 0.05
    model = perturb(VectorRealNVP(2, num_couplings=4, hidden=16), 0.2).double()
    model.train()
    with torch.no_grad():
        model.log_prob(torch.randn(256, 2, dtype=torch.float64))
    flow = Flow(Sequential(Logit(alpha), model.bijector), (2,), support=logit_domain(alpha))
    flow = flow.double().eval()
    lo, hi = logit_domain(alpha)
    n = 1201
    g = torch.linspace(lo, hi, n + 2, dtype=torch.float64)[1:-1]
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)
    with torch.no_grad():
        p = flow.log_prob(pts).exp().reshape(n, n).numpy()
    gn = g.numpy()
    total = np.trapezoid(np.trapezoid(p, gn, axis=1), gn)
    assert abs(total - 1) < 1e-3


def test_bits_per_dim_of_the_logit_normal_model_matches_the_closed_form():
    alpha, k, d = 0.05, 256, 6
    flow = Flow(Logit(alpha), (d,), support=logit_domain(alpha)).double()
    x = torch.randint(0, k, (4, d)).double()
    y = (x + torch.rand_like(x)) / k
    yn = y.numpy()
    p = alpha + (1 - 2 * alpha) * yn
    z = np.log(p) - np.log1p(-p)
    log_density = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) + math.log(1 - 2 * alpha)
                   - np.log(p) - np.log1p(-p)).sum(axis=1)
    expected = (-log_density + d * math.log(k)) / (d * math.log(2))
    got = bits_per_dim(flow.log_prob(y), d, k)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k, bits", [(256, 8.0), (17, math.log2(17)), (2, 1.0)])
def test_uniform_density_costs_log2_k_bits(k, bits):
    assert bits_per_dim(torch.zeros(3), 100, k).tolist() == pytest.approx([bits] * 3)


def test_continuous_data_bits_per_dim():
    assert bits_per_dim(torch.tensor([-2 * math.log(2)]), 2, None).item() == pytest.approx(1.0)


def test_dequantize_round_trip_and_range():
    torch.manual_seed(0)
    deq = Dequantize(17)
    x = torch.randint(0, 17, (64, 1, 8, 8))
    y, log_det = deq(x)
    assert y.min() >= 0 and y.max() < 1 and y.dtype == torch.float32
    assert torch.equal(deq.inverse(y)[0], x.float())
    torch.testing.assert_close(log_det, torch.full((64,), -64 * math.log(17)))
    assert not torch.equal(deq(x)[0], y)  # fresh noise every call
    with pytest.raises(ValueError):
        Dequantize(1)


def test_logit_inverse_is_stable_far_out():
    logit = Logit(0.05).double()
    z = torch.tensor([[-40.0, 40.0]], dtype=torch.float64)
    y, log_det = logit.inverse(z)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_shards_interleave_to_one_global_draw(dtype):
    """``shard=(r, 2)``: each of two processes draws the global batch's noise and keeps its rows
    ``r::2``; interleaved, the two shards are one world-1 draw of the global batch from the same
    seed (``rand_like`` of the global batch is the stream of ``rand`` of its shape), and every
    process's RNG ends where the world-1 draw leaves it."""
    deq = Dequantize(17)
    x = torch.randint(0, 17, (8, 2, 3, 3), generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0, 0, 0] = 16  # the top level, where the bin-edge correction matters most
    torch.manual_seed(5)
    whole, log_det = deq(x)
    after_whole = torch.rand(1)
    torch.manual_seed(5)
    like = torch.rand_like(x)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(x.shape, dtype=dtype), like)
    shards = []
    for rank in range(2):
        torch.manual_seed(5)
        y, ld = deq(x[rank::2], shard=(rank, 2))
        assert torch.equal(torch.rand(1), after_whole)
        assert y.dtype == dtype and torch.equal(ld, log_det[rank::2])
        shards.append(y)
    merged = torch.empty_like(whole)
    merged[0::2], merged[1::2] = shards
    assert torch.equal(merged, whole)
    assert torch.equal(deq.inverse(merged)[0], x) and merged.max() < 1
    torch.manual_seed(5)  # world 1 given explicitly is the default
    assert torch.equal(deq(x, shard=(0, 1))[0], whole)


def test_dequantize_shard_applies_the_input_check_and_the_bin_edges(monkeypatch):
    deq = Dequantize(4)
    x = torch.randint(0, 4, (6, 5))
    with pytest.raises(ValueError, match="non-integer"):
        deq(x + 0.5, shard=(1, 2))
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        deq(x + 4, shard=(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        deq(torch.full((2, 5), float("nan")), shard=(0, 2))
    for bad in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="shard"):
            deq(x, shard=bad)
    # the largest float32 below one, which torch.rand can draw: 3 + u rounds up to 4, so y would
    # be 1; the correction puts it back into the top bin, sharded as unsharded
    u = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    top = torch.full((3, 4), 3.0)
    monkeypatch.setattr(torch, "rand", lambda size, **kw: torch.full(size, u, **kw))
    assert float(torch.tensor(3.0) + u) == 4.0
    for shard in [(0, 1), (1, 2)]:
        y, _ = deq(top, shard=shard)
        assert y.max() < 1 and torch.equal(deq.inverse(y)[0], top), shard
