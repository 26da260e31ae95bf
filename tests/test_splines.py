"""Rational-quadratic splines (Neural Spline Flows, eqs. 4-6 and App. A) and the spline coupling:
a value worked by hand from eq. 4, exact inverses and derivatives against autograd and finite
differences at bin edges, at ±bound, in the tails and at 1e6, monotonicity, identity tails, and
the coupling's inverse and log-det against the Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import check_log_det, check_round_trip, perturb
from realnvp import NSFCoupling
from realnvp.bijectors import BatchNorm, Checkerboard, Halves, Sequential, SplineCoupling, rational_quadratic
from realnvp.bijectors.splines import spline_derivatives, spline_knots
from realnvp.nets import MLP, ResNet

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raw_derivative(delta: float) -> float:
    """The unnormalised parameter whose knot derivative is ``delta`` (``min_derivative=0``)."""
    return math.log(2.0 ** delta - 1.0)


def random_params(shape, bins, seed=0, scale=1.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w, h = (scale * torch.randn(*shape, bins, generator=g, dtype=dtype) for _ in range(2))
    d = scale * torch.randn(*shape, bins - 1, generator=g, dtype=dtype)
    return w, h, d


def points(bound, knots, dtype=torch.float64):
    """Interior points, the knots themselves (edges, ±bound), points just inside and outside
    the interval, tails and extreme values."""
    extra = torch.tensor([0.0, 0.3, -1.7, bound, -bound, bound * (1 - 1e-12), -bound * (1 - 1e-12),
                          bound * (1 + 1e-9), -bound * (1 + 1e-9), 2 * bound, -3 * bound, 1e6, -1e6],
                         dtype=dtype)
    return torch.cat((extra, knots))


# ------------------------------------------------------------------------------------ the formula


def test_one_value_from_eq_4_by_hand():
    """Two bins on [-1, 1]: widths 0.5, 1.5 (knots x = -1, -0.5, 1), heights 1, 1 (y = -1, 0, 1),
    derivatives 1, 2, 1. At x = 0: bin 1, ξ = 1/3, s = 2/3, δ_k = 2, δ_k+1 = 1, so eq. 4 gives
    y = (2/27 + 4/9) / (2/3 + (5/3)(2/9)) = 1/2 and eq. 5 dy/dx = 15/28."""
    w = torch.log(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    h = torch.zeros(1, 2, dtype=torch.float64)
    d = torch.tensor([[raw_derivative(2.0)]], dtype=torch.float64)
    kw = dict(bound=1.0, min_bin=0.0, min_derivative=0.0)
    x = torch.tensor([0.0], dtype=torch.float64)
    y, ld = rational_quadratic(x, w, h, d, **kw)
    torch.testing.assert_close(y, torch.tensor([0.5], dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(ld, torch.tensor([math.log(15 / 28)], dtype=torch.float64), atol=1e-14, rtol=0)
    xb, ild = rational_quadratic(y, w, h, d, inverse=True, **kw)
    torch.testing.assert_close(xb, x, atol=1e-14, rtol=0)
    torch.testing.assert_close(ild, -ld, atol=1e-14, rtol=0)
    # at the knots the spline passes through (x_k, y_k) with the knot derivatives
    knots = torch.tensor([-1.0, -0.5, 1.0], dtype=torch.float64)
    y, ld = rational_quadratic(knots, w.expand(3, 2), h.expand(3, 2), d.expand(3, 1), **kw)
    torch.testing.assert_close(y, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-14, rtol=0)
    deltas = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ld.exp(), deltas, atol=1e-12, rtol=0)


def test_parametrisation():
    w = torch.tensor([[0.0, 1.0, -2.0]])
    knots = spline_knots(w, bound=2.0, min_bin=0.01)
    assert knots[0, 0] == -2.0 and knots[0, -1] == 2.0
    sizes = knots.diff(dim=-1) / 4.0
    torch.testing.assert_close(sizes, 0.01 + 0.97 * torch.softmax(w, dim=-1))
    ds = spline_derivatives(torch.tensor([[0.0, -50.0, 3.0]]), min_derivative=1e-3)
    assert ds[0, 0] == 1.0 and ds[0, -1] == 1.0
    torch.testing.assert_close(ds[0, 1], torch.tensor(1.0))  # raw 0 -> derivative 1
    assert 1e-3 <= ds[0, 2] < 1.01e-3
    with pytest.raises(ValueError, match="min_bin"):
        spline_knots(torch.zeros(1, 10), 1.0, min_bin=0.1)


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    w, h, d = (torch.zeros(101, k, dtype=torch.float64) for k in (8, 8, 7))
    y, ld = rational_quadratic(x, w, h, d, bound=3.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, torch.zeros_like(ld), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [1, 2, 8])
def test_round_trip_derivative_and_tails_at_the_edges(bins, dtype):
    bound = 3.0
    w, h, d = random_params((1,), bins, seed=bins)
    xs = spline_knots(w, bound, 1e-3)[0]
    x = points(bound, xs)
    n = x.numel()
    w, h, d = (p.expand(n, -1).to(dtype) for p in (w, h, d))
    x = x.to(dtype).requires_grad_(True)
    y, ld = rational_quadratic(x, w, h, d, bound=bound)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(grad.log(), ld.detach(), atol=tol * 10, rtol=0)
    outside = x.detach().abs() > bound
    assert torch.equal(y[outside], x[outside]) and (ld[outside] == 0).all()
    xb, ild = rational_quadratic(y.detach(), w, h, d, inverse=True, bound=bound)
    assert torch.isfinite(xb).all() and torch.isfinite(ild).all()
    torch.testing.assert_close(xb, x.detach(), atol=tol * 10, rtol=0)
    torch.testing.assert_close(ild, -ld.detach(), atol=tol * 100, rtol=0)
    # the knots map to the knots, so an inverse query exactly on a y knot (and at ±bound) works
    ys = spline_knots(h[:1].double(), bound, 1e-3)[0].to(dtype)
    xk, _ = rational_quadratic(ys, w[: len(ys)], h[: len(ys)], d[: len(ys)], inverse=True, bound=bound)
    torch.testing.assert_close(xk, xs.to(dtype), atol=tol * 10, rtol=0)


def test_derivative_against_finite_differences_at_knots():
    bound, eps = 2.0, 1e-7
    w, h, d = random_params((1,), 5, seed=3)
    xs = spline_knots(w, bound, 1e-3)[0]
    x = torch.cat((xs, torch.tensor([0.1, -1.3, bound - 1e-3]).double()))
    n = x.numel()
    w, h, d = (p.expand(n, -1) for p in (w, h, d))
    _, ld = rational_quadratic(x, w, h, d, bound=bound)
    for inverse in (False, True):
        f = lambda v, inverse=inverse: rational_quadratic(v, w, h, d, inverse, bound)[0]  # noqa: E731
        slope = (f(x + eps) - f(x - eps)) / (2 * eps)
        log_slope = rational_quadratic(x, w, h, d, inverse, bound)[1]
        # the spline is C1 at the knots (and at ±bound, where the tails' slope 1 meets δ = 1)
        torch.testing.assert_close(slope.log(), log_slope, atol=1e-5, rtol=0)
    assert ld.abs().max() > 0.1  # not the identity


def test_gradients_wrt_parameters_are_finite_everywhere():
    bound = 3.0
    w, h, d = random_params((1,), 6, seed=5)
    x = points(bound, spline_knots(w, bound, 1e-3)[0])
    n = x.numel()
    for inverse in (False, True):
        params = [p.expand(n, -1).clone().requires_grad_(True) for p in (w, h, d)]
        y, ld = rational_quadratic(x, *params, inverse=inverse, bound=bound)
        grads = torch.autograd.grad((y + ld).sum(), params)
        assert all(torch.isfinite(g).all() for g in grads)


def test_monotone_and_identity_tails():
    bound = 4.0
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    w, h, d = random_params((1,), 10, seed=7, scale=3.0)
    w, h, d = (p.expand(x.numel(), -1) for p in (w, h, d))
    y, ld = rational_quadratic(x, w, h, d, bound=bound)
    assert (y.diff() > 0).all()
    tails = x.abs() > bound
    assert torch.equal(y[tails], x[tails]) and (ld[tails] == 0).all()
    xb, _ = rational_quadratic(y, w, h, d, inverse=True, bound=bound)
    torch.testing.assert_close(xb, x, atol=1e-9, rtol=0)


@FAST
@given(bins=st.integers(1, 10), bound=st.floats(0.5, 6.0), seed=st.integers(0, 10**6),
       scale=st.floats(0.0, 4.0), shape=st.sampled_from([(7,), (3, 4), (2, 2, 3)]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_random_splines_invert_and_match_autograd(bins, bound, seed, scale, shape, dtype):
    w, h, d = random_params(shape, bins, seed, scale, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * bound).to(dtype).requires_grad_(True)
    y, ld = rational_quadratic(x, w, h, d, bound=bound)
    assert y.shape == ld.shape == shape
    (grad,) = torch.autograd.grad(y.sum(), x)
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(grad.log(), ld.detach(), atol=tol, rtol=0)
    xb, ild = rational_quadratic(y.detach(), w, h, d, inverse=True, bound=bound)
    # the inverse is as exact as its conditioning allows: y's rounding error over the slope
    slope = ld.detach().exp()
    allowed = tol * bound + 100 * torch.finfo(dtype).eps * bound / slope
    assert ((xb - x.detach()).abs() <= allowed).all()
    # its log-det is minus the forward one at the point it returns
    torch.testing.assert_close(ild, -rational_quadratic(xb, w, h, d, bound=bound)[1], atol=tol * 10, rtol=0)


def test_bad_parameter_shapes():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="4-bin spline needs 4 widths, 4 heights and 3 derivatives"):
        rational_quadratic(x, torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bound must be positive"):
        rational_quadratic(x, torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 1), bound=0.0)


# ------------------------------------------------------------------------------------ coupling


def vector_spline(dim, flip, bins=4):
    mask = Halves(dim, flip)
    return SplineCoupling(mask, MLP(mask.in_features, mask.out_features * (3 * bins - 1), hidden=12,
                                    weight_norm=False), bins=bins, bound=2.5)


def image_spline(mask, bins=3):
    return SplineCoupling(mask, ResNet(mask.in_features, mask.out_features * (3 * bins - 1), hidden=6,
                                       num_blocks=1), bins=bins, bound=2.5)


LAYERS = {
    "vector-0": (lambda: vector_spline(4, False), (4,)),
    "vector-1-odd": (lambda: vector_spline(5, True), (5,)),
    "vector-with-batchnorm": (
        lambda: Sequential(vector_spline(4, False), BatchNorm(4), vector_spline(4, True)), (4,)),
    "image-channels": (lambda: image_spline(Halves(2, True)), (2, 2, 2)),
    "image-checkerboard": (lambda: image_spline(Checkerboard(1, 2, 2, 0)), (1, 2, 2)),
}


def make(name, dtype, mode, batch=4, seed=0):
    factory, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = perturb(factory(), 0.3, seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn((batch, *shape), generator=g) * 1.5).to(dtype)
    # a tail and an extreme value (a moderate one before a batch norm: its statistics in float32
    # would lose the other examples)
    x.view(batch, -1)[0, :2] = torch.tensor([3.0, -1e6 if "batchnorm" not in name else -7.0])
    if mode == "eval":
        layer.train()
        with torch.no_grad():
            layer(torch.randn((16, *shape), generator=g).to(dtype))
    layer.train(mode == "train")
    return layer, x


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_coupling_round_trip(name, dtype, mode):
    layer, x = make(name, dtype, mode)
    check_round_trip(layer, x, atol=1e-7 if dtype == torch.float64 else 2e-4)
    y, _ = layer(x)
    assert torch.equal(layer.invert(y), layer.inverse(y)[0])


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_coupling_log_det_matches_jacobian(name, mode):
    layer, x = make(name, torch.float64, mode, batch=3)
    check_log_det(layer, x, atol=1e-8)


def test_checkerboard_conditioning_squares_pass_unchanged():
    layer, x = make("image-checkerboard", torch.float64, "eval")
    y, _ = layer(x)
    b = layer.mask.b.bool().expand_as(x)
    assert torch.equal(y[b], x[b]) and not torch.allclose(y[~b], x[~b])


def test_coupling_transforms_the_active_half_only():
    layer, x = make("vector-0", torch.float64, "eval")
    y, _ = layer(x)
    assert torch.equal(y[:, :2], x[:, :2]) and not torch.allclose(y[1:, 2:], x[1:, 2:])


def test_coupling_net_of_the_wrong_width():
    mask = Halves(4)
    layer = SplineCoupling(mask, MLP(2, 2 * 10, hidden=4), bins=4)
    with pytest.raises(ValueError, match=r"must emit 2 x 11 = 22 channels \(4 bins\), got 20"):
        layer(torch.randn(3, 4))


def test_spline_couplings_support_memory_saving_backprop():
    grads = []
    for saving in (False, True):
        torch.manual_seed(0)
        model = perturb(NSFCoupling(3, num_layers=3, hidden=8, bins=3, batch_norm=True, permutation="random"))
        model.double().memory_saving_(saving)
        x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (-model.log_prob(x).mean()).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
