"""Whole models: exactness, batch independence in eval mode, gradients, state dicts, sampling;
the choices taken from the paper and the authors' code (factor-out, s/t input, coupling map)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import check_log_det, perturb
from realnvp import RealNVP, VectorRealNVP
from realnvp.bijectors import (
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    ChannelPermutation,
    Checkerboard,
    Halves,
    Sequential,
    Squeeze,
)
from realnvp.bijectors.glow import GlowAffineCoupling

CONFIGS = {
    "image-2x4x4": lambda: RealNVP((2, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1),
    "image-3x8x8": lambda: RealNVP((3, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1),
    "image-3x8x8-channel-factor-out": lambda: RealNVP(
        (3, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1, factor_out="channels"),
    "image-1x8x8-3scales-additive": lambda: RealNVP(
        (1, 8, 8), num_scales=3, hidden_channels=4, num_blocks=1, coupling="additive"),
    "image-no-bn-no-logit": lambda: RealNVP(
        (2, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1, batch_norm=False,
        logit_alpha=None),
    "vector-6": lambda: VectorRealNVP(6, num_couplings=4, hidden=16),
    "vector-2-additive": lambda: VectorRealNVP(2, num_couplings=4, hidden=16, coupling="additive"),
    # the plain architecture of FrEIA / zuko / normflows: no batch norm, no weight norm
    "vector-5-plain": lambda: VectorRealNVP(5, num_couplings=3, hidden=16, batch_norm=False,
                                            weight_norm=False),
}


def data(model, batch, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *model.event_shape, generator=g) if model.support else \
        torch.randn(batch, *model.event_shape, generator=g)
    if model.support:
        x = 0.01 + 0.98 * x
    return x.to(dtype)


def build(name, dtype=torch.float32, mode="eval", seed=0):
    torch.manual_seed(seed)
    model = perturb(CONFIGS[name](), 0.05, seed).to(dtype)
    model.train()
    with torch.no_grad():  # realistic running statistics
        for _ in range(3):
            model.log_prob(data(model, 32, dtype, seed=seed + 7))
    model.train(mode == "train")
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip(name, dtype, mode):
    model = build(name, dtype, mode)
    x = data(model, 8, dtype)
    z, log_det = model.bijector(x)
    assert z.shape == (8, model.num_dims)
    x_back, inv_log_det = model.bijector.inverse(z)
    assert torch.equal(model.bijector.invert(z), x_back)  # the log-det-free path sampling takes
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert (x_back - x).abs().max() <= tol
    torch.testing.assert_close(inv_log_det, -log_det, atol=tol * 10, rtol=1e-5)
    if mode == "eval":
        assert (model.decode(model.encode(x)) - x).abs().max() <= tol


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_log_det_matches_jacobian(name, mode):
    model = build(name, torch.float64, mode)
    check_log_det(model.bijector, data(model, 3, torch.float64), atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_log_prob_does_not_depend_on_the_batch(name):
    model = build(name, torch.float64)
    x = data(model, 16, torch.float64)
    full = model.log_prob(x)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(model.log_prob(x[:1]), full[:1], atol=1e-9, rtol=0)
    torch.testing.assert_close(model.log_prob(x[5:9]), full[5:9], atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = CONFIGS[name]()  # the real initialisation, not perturbed
    x = data(model, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def grads():
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    # A batch-norm shift that meets only batch norms downstream has a gradient that is exactly
    # zero in exact arithmetic: before a squeeze and an *additive* channel-wise coupling, beta
    # shifts whole channels, which the s/t network's input norm and the next batch-norm bijector
    # both subtract again (its float64 gradient is ~1e-16). Its float32 gradient is round-off, so
    # the "not all zero" check below would pass or fail by luck; it is skipped for those.
    redundant = set()
    if model.config.get("coupling") == "additive" and model.config.get("batch_norm"):
        for stage_name, stage in model.named_modules():
            layers = list(stage.layers) if isinstance(stage, Sequential) else []
            for i, (layer, after) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
                if isinstance(layer, BatchNorm) and isinstance(after, Squeeze):
                    redundant.add(f"{stage_name}.layers.{i}.beta")

    for step in range(2):  # at initialisation and after one optimizer step
        for n, g in grads().items():
            assert g is not None, f"{n} has no gradient (step {step})"
            assert torch.isfinite(g).all(), f"{n} has a non-finite gradient (step {step})"
            assert n in redundant or g.abs().sum() > 0, f"{n} has an all-zero gradient (step {step})"
        opt.step()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip(name):
    model = build(name)
    x = data(model, 4)
    torch.manual_seed(123)
    other = CONFIGS[name]()
    other.load_state_dict(model.state_dict())
    other.eval()
    torch.testing.assert_close(other.log_prob(x), model.log_prob(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["image-3x8x8", "vector-6"])
def test_sample_shapes_and_temperature(name):
    model = build(name, torch.float64)
    model.train()
    s = model.sample(7, temperature=0.7)
    assert s.shape == (7, *model.event_shape) and torch.isfinite(s).all()
    assert model.training, "sample() must restore the previous mode"
    # mixed modes come back exactly; samples use the running averages whatever the mode
    frozen = next(m for m in model.modules() if m is not model and m.training)
    frozen.eval()
    before = [m.training for m in model.modules()]
    a = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert [m.training for m in model.modules()] == before
    model.eval()
    b = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not any(m.training for m in model.modules())
    # temperature 0 decodes the prior's mode, the same every time
    assert torch.equal(model.sample(2, 0.0)[0], model.sample(2, 0.0)[1])
    g = torch.Generator().manual_seed(0)
    for t in (0.5, 1.0):
        z = model.encode(model.sample(200, temperature=t, generator=g))
        assert abs(z.std().item() - t) < 0.05 * t
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.sample(3, generator=g1), model.sample(3, generator=g2))
    if model.support:
        s = model.sample(50, 1.0)
        assert s.min() >= -0.06 and s.max() <= 1.06  # logit's range with alpha=0.05


def test_paper_cifar_architecture():
    model = RealNVP((3, 32, 32), num_scales=2, hidden_channels=64, num_blocks=8)
    stages = model.bijector[1].stages
    first, last = list(stages[0]), list(stages[1])
    couplings = [m for m in first if isinstance(m, AffineCoupling)]
    assert len(couplings) == 6
    assert [type(c.mask).__name__ for c in couplings] == ["Checkerboard"] * 3 + ["Halves"] * 3
    assert [c.mask.parity for c in couplings[:3]] == [0, 1, 0]
    assert [c.mask.flip for c in couplings[3:]] == [False, True, False]
    assert isinstance(first[6], Squeeze)
    assert sum(isinstance(m, BatchNorm) for m in first) == 6
    assert [c.net.in_conv.out_channels for c in couplings] == [64] * 3 + [128] * 3
    assert len(couplings[0].net.blocks) == 8
    last_couplings = [m for m in last if isinstance(m, AffineCoupling)]
    assert len(last_couplings) == 4 and all(c.mask.in_features == 6 for c in last_couplings)
    assert last_couplings[0].net.in_conv.out_channels == 128
    assert model.bijector[1].latent_shapes == [(6, 16, 16), (6, 16, 16)]


def test_regularized_parameters_are_scales_only():
    """The authors' L2 term: every weight-norm ``magnitude`` and the checkerboard couplings'
    ``rescaling_scale``; convolutions built with ``scale=False`` (the s/t net's first one, each
    block's first, which a batch norm follows) have no magnitude to penalise."""
    model = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    names = {id(p): n for n, p in model.named_parameters()}
    reg = [names[id(p)] for p in model.regularized_parameters()]
    assert reg and all(n.endswith(("weight_g", "rescale")) for n in reg)
    affine = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    checker = [c for c in affine if isinstance(c.mask, Checkerboard)]
    assert len(affine) == 10 and len(checker) == 7
    assert sum(n.endswith("rescale") for n in reg) == 7
    penalised = {id(p) for p in model.regularized_parameters()}
    assert all((id(c.rescale) in penalised) == (c in checker) for c in affine)
    # in_skip, one skip, the block's second conv and the output conv in each of the 10 networks
    assert sum(n.endswith("weight_g") for n in reg) == 4 * 10
    assert not any(n.endswith(("weight_v", "bias")) for n in reg)
    for c in affine:
        assert not hasattr(c.net.in_conv, "weight_g")
        assert all(not hasattr(b.net[2], "weight_g") and isinstance(b.net[3], nn.BatchNorm2d)
                   for b in c.net.blocks)


def _stage_output(stage, x):
    """What a scale emits before any factor-out reordering, in its squeezed layout."""
    for layer in stage:
        if isinstance(layer, ChannelPermutation):
            break
        x, _ = layer(x)
    return x


@pytest.mark.parametrize("kwargs", [{}, {"factor_out": "channels"}], ids=["default", "channels"])
def test_factor_out_is_a_checkerboard_colour(kwargs):
    """The authors' ``squeeze_2x2_ordered`` split (the default): z_1 is the odd checkerboard
    colour (offsets (0,1), (1,0) of each 2×2 block) of the first scale's output, all channels;
    the even colour ((0,0) channels first, then (1,1)) is what the next scale receives. Fails for
    the channel-halves factor-out, which the second case pins as it is."""
    torch.manual_seed(0)
    model = perturb(RealNVP((3, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1,
                            logit_alpha=None, **kwargs), 0.05).eval()
    stages = model.bijector.stages
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        z = model.encode(x)
        h = _stage_output(stages[0], x)  # (B, 12, 4, 4)
        u = F.pixel_shuffle(h, 2)  # the same at the scale's own resolution, (B, 3, 8, 8)
        if kwargs:
            factored, kept = h[:, :6], h[:, 6:]
        else:
            factored = torch.cat((u[..., 0::2, 1::2], u[..., 1::2, 0::2]), dim=1)
            kept = torch.cat((u[..., 0::2, 0::2], u[..., 1::2, 1::2]), dim=1)
        rest = stages[1](kept)[0]
    assert model.bijector.latent_shapes == [(6, 4, 4), (6, 4, 4)]
    assert torch.equal(z[:, :96], factored.flatten(1))
    assert torch.equal(z[:, 96:], rest.flatten(1))
    assert model.config["factor_out"] == kwargs.get("factor_out", "checkerboard")


def test_st_network_input_follows_the_authors_code():
    """``masked_conv_aff_coupling``: the network sees relu([2·bn(b⊙x), −2·bn(b⊙x), b]); the
    channel-wise coupling relu([bn(x₁), −bn(x₁)]); batch norms without gain, ε = 1e-4."""
    torch.manual_seed(0)
    model = perturb(RealNVP((2, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1), 0.2)
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    seen = {}
    hooks = [c.net.register_forward_pre_hook(lambda net, args: seen.__setitem__(net, args[0]))
             for c in couplings]
    model.log_prob(torch.rand(5, 2, 4, 4))
    for h in hooks:
        h.remove()
    for c in couplings:
        net, checker = c.net, isinstance(c.mask, Checkerboard)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bn.weight is None and bn.bias is not None and bn.eps == 1e-4 for bn in bns)
        assert net.in_conv.in_channels == 2 * c.mask.in_features + checker
        cond = seen[net].detach()
        if checker:  # the masked input b⊙x
            assert torch.equal(cond * (1 - c.mask.b), torch.zeros_like(cond))
        normed = F.batch_norm(cond, None, None, None, net.in_norm.bias, True, 0.0, 1e-4)
        gain = 2.0 if checker else 1.0
        expected = [gain * normed, -gain * normed]
        if checker:
            expected.append(c.mask.b.expand(5, 1, *cond.shape[2:]))
        torch.testing.assert_close(net._lift_input(cond), torch.relu(torch.cat(expected, dim=1)))


def test_rescale_is_a_scalar_initialised_as_the_authors_do():
    """One scalar per coupling: 0 in checkerboard couplings (``rescaling_scale``), 1 in
    channel-wise ones (``scale``); it gets a gradient from the first step."""
    model = RealNVP((2, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1)
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    for c in couplings:
        assert c.rescale.shape == ()
        assert c.rescale.item() == (0.0 if isinstance(c.mask, Checkerboard) else 1.0)
    (-model.log_prob(torch.rand(8, 2, 4, 4)).mean()).backward()
    assert all(c.rescale.grad.abs() > 0 for c in couplings)


class _Stub(nn.Module):
    """An s/t "network" that ignores its input and emits fixed raw scales and shifts."""

    def __init__(self, raw: torch.Tensor, t: torch.Tensor):
        super().__init__()
        self.h = torch.cat((raw, t), dim=1) if raw is not None else t

    def forward(self, cond):
        return self.h.expand(cond.shape[0], *self.h.shape[1:]).to(cond.dtype)


@pytest.mark.parametrize("mask", ["checkerboard", "halves"])
@pytest.mark.parametrize("memory_saving", [False, True])
def test_affine_coupling_is_the_papers_map(mask, memory_saving):
    """Paper eq. 6: y = x⊙exp(s) + t on the transformed part, y = x on the rest, log-det Σ s;
    with s = rescale·tanh(raw) for the network's known (raw, t). Self-consistency (inverse,
    Jacobian) cannot tell this map from (x + t)⊙exp(s); this test does."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 4, 4, generator=g, dtype=torch.float64)
    m = Checkerboard(4, 4, 4, parity=1) if mask == "checkerboard" else Halves(4, flip=True)
    shape = (1, 4, 4, 4) if mask == "checkerboard" else (1, 2, 4, 4)
    raw, t = torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g) * 3
    layer = AffineCoupling(m, _Stub(raw, t), rescale_init=1.5).double()
    s = 1.5 * torch.tanh(raw.double())
    if mask == "checkerboard":
        active = 1 - m.b.double()
        expected = x * (1 - active) + active * (x * torch.exp(s) + t)
        log_det = (active * s).sum(dim=(1, 2, 3)).expand(4)
    else:  # flip: the second half conditions, the first is transformed
        expected = torch.cat((x[:, :2] * torch.exp(s) + t, x[:, 2:]), dim=1)
        log_det = s.sum().expand(4)
    chain = Sequential(layer)
    chain.memory_saving = memory_saving
    x_in = x.clone().requires_grad_(memory_saving)
    y, ld = chain(x_in)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, log_det, rtol=1e-12, atol=1e-12)
    back, ld_inv = layer.inverse(expected)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld_inv, -log_det, rtol=1e-12, atol=1e-12)
    if memory_saving:  # the recomputed backward differentiates the same map
        weights = torch.arange(y.numel(), dtype=y.dtype).view_as(y)
        (y * weights).sum().backward()
        if mask == "checkerboard":
            slope = 1 - active + active * torch.exp(s)
        else:
            slope = torch.cat((torch.exp(s), torch.ones_like(s)), dim=1)
        torch.testing.assert_close(x_in.grad, weights * slope, rtol=1e-12, atol=1e-12)


def test_additive_coupling_is_nices_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(1, 2, generator=g)
    y, ld = AdditiveCoupling(Halves(4), _Stub(None, t))(x)
    torch.testing.assert_close(y, torch.cat((x[:, :2], x[:, 2:] + t), dim=1), rtol=0, atol=1e-15)
    assert torch.equal(ld, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(4, 1, 8, 7), "shape"),
        (torch.rand(0, 1, 8, 8), "empty"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 1, 8, 8) * 255, r"must lie in \[-0.05556, 1.056\]"),
        (torch.randint(0, 2, (2, 1, 8, 8)), "floating"),
        (torch.rand(2, 1, 8, 8, dtype=torch.float64), "dtype"),
        ([[0.5]], "Tensor"),
    ],
)
def test_bad_input_is_refused_clearly(x, message):
    model = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    with pytest.raises(ValueError, match=message):
        model.log_prob(x)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="squeezed"):
        RealNVP((1, 6, 6), num_scales=3)
    with pytest.raises(ValueError, match="coupling"):
        RealNVP((1, 8, 8), coupling="spline")
    with pytest.raises(ValueError):
        VectorRealNVP(1)
    model = VectorRealNVP(2)
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError):
        model.sample(0)
    with pytest.raises(ValueError, match="dropout"):
        RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1, dropout=1.0)


class _Reseeded(nn.Module):
    """The wrapped bijector with the generator reseeded before every call: one dropout draw."""

    def __init__(self, bijector, seed=5):
        super().__init__()
        self.bijector, self.seed = bijector, seed

    def forward(self, x):
        torch.manual_seed(self.seed)
        return self.bijector(x)

    def inverse(self, y):
        torch.manual_seed(self.seed)
        return self.bijector.inverse(y)


def _dropout_model(p=0.3, dtype=torch.float64):
    torch.manual_seed(0)
    model = perturb(RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=2, dropout=p),
                    0.05).to(dtype)
    return model.train()


def test_dropout_draws_masks_in_training_and_none_in_evaluation():
    model = _dropout_model()
    x = data(model, 8, torch.float64)
    torch.manual_seed(1)
    a = model.log_prob(x)
    torch.manual_seed(2)
    b = model.log_prob(x)
    assert (a - b).abs().max() > 1e-3  # two draws, two different maps
    torch.manual_seed(1)
    torch.testing.assert_close(model.log_prob(x), a, rtol=0, atol=0)  # the same draw, the same map
    # evaluation: no dropout, the same density as the same weights without a dropout layer
    plain = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=2).double()
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    torch.testing.assert_close(model.log_prob(x), plain.log_prob(x), rtol=0, atol=1e-12)


def _dropout_coupling(kind, dtype):
    """A coupling with dropout 0.3 in its network, on ``(4, 4, 4)``, perturbed, in training mode."""
    torch.manual_seed(0)
    if kind == "glow":
        return perturb(GlowAffineCoupling(4, hidden_channels=8, dropout=0.3), 0.05).to(dtype).train()
    model = perturb(RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=2, dropout=0.3,
                            coupling=kind), 0.05).to(dtype).train()
    cls = AffineCoupling if kind == "affine" else AdditiveCoupling
    return [m for m in model.modules() if isinstance(m, cls)][3]  # channel-wise, after the squeeze


@pytest.mark.parametrize("kind", ["affine", "additive", "glow"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_coupling_is_exact_for_each_draw(dtype, kind):
    """With dropout a coupling's training-mode map is random, but for one draw of the masks it
    is a bijection: the inverse under the same draw gives the input back, and the log-det is the
    Jacobian's."""
    layer = _Reseeded(_dropout_coupling(kind, dtype))
    x = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    layer(x)  # Glow's actnorms initialise on their first batch
    torch.manual_seed(9)
    y_other, _ = layer.bijector(x)
    assert (y_other - layer(x)[0]).abs().max() > 1e-3  # another draw, another map
    z, log_det = layer(x)
    x_back, inv_log_det = layer.inverse(z)
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert (x_back - x).abs().max() <= tol
    torch.testing.assert_close(inv_log_det, -log_det, atol=tol * 10, rtol=1e-5)
    if dtype == torch.float64:
        check_log_det(layer, x[:3], atol=1e-6)
