"""MADE's autoregressive property (the autograd Jacobian is strictly triangular in the chosen
order), the masked autoregressive layer in both directions and with both transformers (exact
inverses, log-dets against the Jacobian, the number of passes, gradients through the sequential
direction), and the MAF / IAF / NSF vector models (round trips, log-dets, one-pass densities of
their own samples, checkpoints restoring the orders)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from helpers import check_log_det, check_round_trip, jacobian_log_dets, perturb
from realnvp import IAF, MAF, NSFAutoregressive, NSFCoupling
from realnvp.bijectors import MaskedAutoregressive
from realnvp.nets import MADE

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def made_jacobian(made: MADE, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_b |∂out[b, d, p] / ∂x[b, j]|`` over the batch and the P outputs: ``(D, D)``."""
    def f(xb):
        return made(xb, context).sum(dim=0)  # rows are independent: the sum keeps each row's Jacobian

    jac = torch.autograd.functional.jacobian(f, x)  # (D, P, B, D)
    return jac.abs().sum(dim=(1, 2))


def orders(kind: str, d: int, seed: int = 0) -> torch.Tensor | None:
    if kind == "default":
        return None
    if kind == "reversed":
        return torch.arange(d, 0, -1)
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed)) + 1


def check_autoregressive(made: MADE, order: torch.Tensor | None, batch: int = 16, seed: int = 0,
                         all_there: bool = True) -> None:
    d = made.features
    ranks = torch.arange(1, d + 1) if order is None else order
    allowed = ranks[None, :] < ranks[:, None]  # [d, j]: output d may depend on input j
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    ctx = torch.randn(batch, made.context_features, generator=g, dtype=torch.float64) \
        if made.context_features else None
    jac = made_jacobian(made, x, ctx)
    assert (jac[~allowed] == 0).all(), "an output depends on an input that is not before it"
    # with hidden >= D − 1 every allowed dependency is in the masks; the Jacobian shows them
    # unless ReLUs are dead on the whole batch (possible for very narrow networks)
    assert torch.equal(made.connectivity(), allowed)
    if all_there:
        assert (jac[allowed] > 0).all()


# ------------------------------------------------------------------------------------ MADE


@pytest.mark.parametrize("context", [0, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("order", ["default", "reversed", "random"])
def test_made_jacobian_is_strictly_triangular_in_its_order(order, num_layers, residual, context):
    d = 5
    o = orders(order, d)
    torch.manual_seed(0)
    made = perturb(MADE(d, 3, hidden=20, num_layers=num_layers, residual=residual, order=o,
                        context_features=context), 0.5).double()
    check_autoregressive(made, o)
    assert made.passes == d


@FAST
@given(d=st.integers(1, 7), extra=st.integers(0, 6), num_layers=st.integers(1, 3), residual=st.booleans(),
       out=st.integers(1, 3), seed=st.integers(0, 1000))
def test_made_property_for_random_orders_and_widths(d, extra, num_layers, residual, out, seed):
    o = orders("random", d, seed)
    torch.manual_seed(seed)
    made = perturb(MADE(d, out, hidden=max(d - 1, 1) + extra, num_layers=num_layers, residual=residual,
                        order=o), 0.5, seed).double()
    check_autoregressive(made, o, seed=seed, all_there=False)


def test_made_context_reaches_every_output():
    torch.manual_seed(0)
    made = perturb(MADE(4, 2, hidden=16, context_features=2, order=torch.tensor([2, 4, 1, 3])), 0.3).double()
    x, c = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda cb: made(x, cb).sum(dim=0), c)  # (D, P, B, C)
    assert (jac.abs().sum(dim=(1, 2, 3)) > 0).all()
    with pytest.raises(ValueError, match=r"context of shape \(5, 2\), got None"):
        made(x[:5])
    with pytest.raises(ValueError, match="without context"):
        MADE(4, 2, hidden=8)(x, c)


def test_made_output_layout_and_start():
    made = MADE(3, 4, hidden=6, out_scale=0.0)
    out = made(torch.randn(2, 3))
    assert out.shape == (2, 3, 4) and (out == 0).all()  # a zero last layer: the flow starts at the identity


def test_made_narrow_hidden_needs_fewer_passes():
    # hidden degrees 1..2 only: ranks 3, 4, 5 all depend on ranks 1, 2, so 3 passes solve everything
    made = MADE(5, 2, hidden=2)
    assert made.passes == 3
    conn = made.connectivity()
    assert not conn[:, 2:].any() and conn[2:, :2].all()


def test_made_bad_input():
    made = MADE(4, 2, hidden=8)
    with pytest.raises(ValueError, match=r"MADE expects \(B, 4\) input, got shape \(3, 5\)"):
        made(torch.randn(3, 5))
    with pytest.raises(ValueError, match="permutation of 1..3"):
        MADE(3, 2, order=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="permutation of 1..3"):
        MADE(3, 2, order=torch.tensor([1, 1, 3]))


# ------------------------------------------------------------------------------------ the layer

LAYER_CASES = [(t, d, o) for t in ("affine", "gated", "spline") for d in ("maf", "iaf")
               for o in ("default", "random")]


def make_layer(transformer, direction, order, dim=4, hidden=8, seed=0, **kw):
    torch.manual_seed(seed)
    layer = MaskedAutoregressive(dim, transformer, direction, hidden=hidden, order=orders(order, dim, seed),
                                 bins=4, bound=2.5, **kw)
    return perturb(layer, 0.4, seed)


def inputs(dim, batch=5, seed=1, dtype=torch.float64):
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5
    x[0, 0] = 4.0  # a spline tail
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transformer,direction,order", LAYER_CASES)
def test_layer_round_trip(transformer, direction, order, dtype):
    layer = make_layer(transformer, direction, order).to(dtype)
    x = inputs(4, dtype=dtype)
    check_round_trip(layer, x, atol=1e-9 if dtype == torch.float64 else 1e-4)
    z, _ = layer(x)
    assert torch.equal(layer.invert(z), layer.inverse(z)[0])


@pytest.mark.parametrize("transformer,direction,order", LAYER_CASES)
def test_layer_log_det_matches_jacobian(transformer, direction, order):
    layer = make_layer(transformer, direction, order).double()
    x = inputs(4, batch=3)
    check_log_det(layer, x, atol=1e-9)
    # and the inverse's log-det is the Jacobian's of the inverse map
    z = layer(x)[0].detach()
    torch.testing.assert_close(layer.inverse(z)[1], jacobian_log_dets(layer.invert, z), atol=1e-9, rtol=0)


@pytest.mark.parametrize("transformer", ["affine", "gated", "spline"])
@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_layer_passes(transformer, direction):
    """The cheap direction is one MADE pass, the other ``passes``: D with a wide MADE, fewer with
    a narrow one, and the inverse is exact either way."""
    for hidden, passes in ((8, 5), (2, 3)):
        layer = make_layer(transformer, direction, "random", dim=5, hidden=hidden).double()
        assert layer.passes == passes
        calls: list[int] = []
        layer.made.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        x = inputs(5)
        z, _ = layer(x)
        forward_calls, calls[:] = len(calls), []
        x_back, _ = layer.inverse(z)
        inverse_calls = len(calls)
        one, many = (forward_calls, inverse_calls) if direction == "maf" else (inverse_calls, forward_calls)
        assert (one, many) == (1, passes)
        torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)


@pytest.mark.parametrize("transformer", ["affine", "gated", "spline"])
def test_iaf_density_direction_is_differentiable(transformer):
    """The D-pass forward of an IAF layer (the density of data) has the gradients of the map it
    computes, with respect to the data and to the MADE's weights (finite differences)."""
    layer = make_layer(transformer, "iaf", "random", dim=3, hidden=4).double()
    name = "made.input.weight"
    params = dict(layer.named_parameters())

    def f(x, w):
        z, ld = functional_call(layer, {**params, name: w}, (x,))
        return z, ld

    x = inputs(3, batch=2).requires_grad_(True)
    w = params[name].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, w))


def test_affine_scale_is_bounded():
    layer = make_layer("affine", "maf", "default").double()
    with torch.no_grad():
        layer.made.output.weight.mul_(1e4)
    _, log_det = layer(inputs(4) * 100)
    assert (log_det.abs() <= layer.rescale.abs().sum() + 1e-9).all()


def test_gated_is_kingmas_update():
    """The gated IAF step is Kingma et al.'s eq. 14, ``x = σ⊙z + (1 − σ)⊙m`` with ``[m, s]`` the
    MADE's outputs on ``z`` and ``σ = sigmoid(s)``, log-det ``Σ log σ``; it starts with every
    ``s`` near the gate bias (a small step from the identity)."""
    fresh = MaskedAutoregressive(4, "gated", "iaf", hidden=8, gate_bias=1.5).double()
    z = inputs(4)
    out = fresh.made(z)
    torch.testing.assert_close(out[..., 1], torch.full_like(out[..., 1], 1.5), atol=0.1, rtol=0)
    layer = make_layer("gated", "iaf", "random").double()
    m, s = layer.made(z).unbind(-1)
    sigma = torch.sigmoid(s)
    x, log_det = layer.inverse(z)
    torch.testing.assert_close(x, sigma * z + (1 - sigma) * m, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, torch.log(sigma).sum(1), atol=1e-12, rtol=0)


def test_layer_bad_input():
    layer = make_layer("affine", "maf", "default")
    with pytest.raises(ValueError, match=r"MaskedAutoregressive expects \(B, 4\) input, got shape \(3, 5\)"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"expects \(B, 4\) input, got shape \(4,\)"):
        layer.inverse(torch.randn(4))
    with pytest.raises(ValueError, match="transformer must be one of"):
        MaskedAutoregressive(4, "cubic")
    with pytest.raises(ValueError, match="direction must be one of"):
        MaskedAutoregressive(4, direction="forward")


# ------------------------------------------------------------------------------------ models

MODELS = {
    "maf": lambda bn: MAF(3, num_layers=3, hidden=8, batch_norm=bn),
    "maf-spline-residual": lambda bn: MAF(3, num_layers=2, hidden=8, transformer="spline", residual=True,
                                          bins=3, bound=3.0, batch_norm=bn, permutation="random", seed=3),
    "maf-mog": lambda bn: MAF(3, num_layers=2, hidden=8, batch_norm=bn, permutation="random", seed=5,
                              mog_components=3),
    "iaf": lambda bn: IAF(3, num_layers=3, hidden=8, batch_norm=bn, permutation="random"),
    "iaf-gated": lambda bn: IAF(3, num_layers=3, hidden=8, transformer="gated", batch_norm=bn),
    "nsf-coupling": lambda bn: NSFCoupling(3, num_layers=3, hidden=8, bins=3, bound=3.0, batch_norm=bn,
                                           permutation="random", seed=1),
    "nsf-coupling-lu": lambda bn: NSFCoupling(3, num_layers=3, hidden=8, bins=3, bound=3.0, batch_norm=bn,
                                              linear="lu", seed=2),
    "nsf-autoregressive": lambda bn: NSFAutoregressive(3, num_layers=2, hidden=8, bins=3, bound=3.0,
                                                       batch_norm=bn),
}


def make_model(name, bn, mode, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = perturb(MODELS[name](bn), 0.3, seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    if mode == "eval":
        model.train()
        with torch.no_grad():
            model.log_prob(torch.randn(32, 3, generator=g).to(dtype))
    model.train(mode == "train")
    return model, (torch.randn(4, 3, generator=g) * 1.5).to(dtype)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_round_trip_and_log_det(name, bn, mode):
    model, x = make_model(name, bn, mode)
    check_round_trip(model.bijector, x, atol=1e-9)
    check_log_det(model.bijector, x, atol=1e-9)
    model32, x32 = make_model(name, bn, mode, torch.float32)
    check_round_trip(model32.bijector, x32, atol=2e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("name", sorted(n for n in MODELS if "mog" not in n))  # a mixture: no rsample
def test_rsample_and_log_prob_is_log_prob(name, temperature):
    """One pass through the sampling direction scores its samples as log_prob does: for an IAF
    the one-pass density of its own samples equals the D-pass density; for a MAF the D-pass
    sampling inverts the one-pass density."""
    model, _ = make_model(name, True, "eval")
    g = torch.Generator().manual_seed(5)
    x, lp = model.rsample_and_log_prob(6, temperature=temperature, generator=g)
    assert x.shape == (6, 3) and lp.shape == (6,) and lp.dtype == torch.float64
    torch.testing.assert_close(model.log_prob(x), lp, atol=1e-9, rtol=0)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * temperature
    torch.testing.assert_close(model.encode(x), z, atol=1e-9, rtol=0)


def test_rsample_and_log_prob_is_differentiable_and_checks_arguments():
    model, _ = make_model("iaf", False, "train", dtype=torch.float32)
    x, lp = model.rsample_and_log_prob(8)
    (x.sum() + lp.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="number of samples"):
        model.rsample_and_log_prob(0)
    with pytest.raises(ValueError, match="temperature"):
        model.rsample_and_log_prob(2, temperature=-1.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_every_parameter(name):
    """Maximum likelihood on data reaches every parameter (for the IAF through its D passes)."""
    model, x = make_model(name, True, "train", dtype=torch.float32)
    (-model.log_prob(x).mean()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_restores_orders_and_config_rebuilds(name):
    model, x = make_model(name, True, "eval")
    other = type(model)(**{**model.config, "seed": model.config["seed"] + 7}).double()
    other.load_state_dict(model.state_dict())
    other.eval()
    torch.testing.assert_close(other.log_prob(x), model.log_prob(x), atol=0, rtol=0)
    rebuilt = type(model)(**model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_permutations():
    reverse = MAF(4, num_layers=3, hidden=4)
    orders_ = [layer.made.order.tolist() for layer in reverse.bijector]
    assert orders_ == [[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]]
    a, b = (MAF(5, num_layers=2, hidden=4, permutation="random", seed=s) for s in (0, 1))
    pairs = zip(a.bijector, b.bijector, strict=True)
    assert not all(torch.equal(la.made.order, lb.made.order) for la, lb in pairs)
    with pytest.raises(ValueError, match="permutation must be one of"):
        MAF(3, permutation="shuffle")
    with pytest.raises(ValueError, match="permutation must be None or 'random'"):
        NSFCoupling(3, permutation="reverse")
    with pytest.raises(ValueError, match="linear must be one of"):
        NSFCoupling(3, linear="qr")


def test_nsf_coupling_lu_puts_a_learned_linear_map_before_every_coupling():
    """The NSF code's ``create_linear_transform``: each coupling sees an invertible linear mix
    of the features (a rotation at the start), whose log|det| the flow counts."""
    model = NSFCoupling(2, num_layers=3, hidden=4, bins=3, linear="lu", seed=0).double()
    kinds = [type(layer).__name__ for layer in model.bijector]
    assert kinds == ["Invertible1x1Conv", "SplineCoupling"] * 3
    w = model.bijector[0].weight()
    torch.testing.assert_close(w @ w.T, torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)
    with torch.no_grad():
        model.bijector[0].log_abs_s.add_(torch.tensor([0.3, -0.1], dtype=torch.float64))
    x = torch.randn(4, 2, dtype=torch.float64)
    _, log_det = model.bijector[0](x)
    torch.testing.assert_close(log_det, torch.full((4,), 0.2, dtype=torch.float64))


def test_one_dimensional_and_bad_input():
    model = MAF(1, num_layers=2, hidden=4)
    x = torch.randn(5, 1)
    torch.testing.assert_close(model.decode(model.encode(x)), x)
    with pytest.raises(ValueError, match="at least 2 dimension"):
        NSFCoupling(1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        MAF(0)
    for cls in (MAF, IAF, NSFCoupling, NSFAutoregressive):
        m = cls(3, num_layers=2, hidden=4)
        with pytest.raises(ValueError, match=r"expected input of shape \(B, 3\), got \(2, 4\)"):
            m.log_prob(torch.randn(2, 4))
        with pytest.raises(ValueError, match=r"expected a latent of shape \(B, 3\)"):
            m.decode(torch.randn(2, 4))
