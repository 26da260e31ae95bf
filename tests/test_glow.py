"""Glow (Kingma & Dhariwal 2018): exactness of the model and of its pieces, the maps pinned against
the authors' code (coupling, split prior, top prior, edge padding, preprocessing), zero
initialisation, actnorm's data-dependent initialisation through state dicts, the LU and plain 1×1
convolutions."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import check_log_det, check_round_trip, jacobian_log_dets, perturb
from realnvp import Glow, bits_per_dim
from realnvp.bijectors import (
    ActNorm,
    GlowAdditiveCoupling,
    GlowAffineCoupling,
    Invertible1x1Conv,
    LearnedPrior,
    Shift,
    SplitPrior,
    ZeroConv2d,
)
from realnvp.bijectors.glow import edge_pad
from realnvp.models.flow import standard_normal_log_prob
from realnvp.nets.context import ContextSlot

CONFIGS = {
    "3x8x8-affine": lambda: Glow((3, 8, 8), num_levels=2, steps_per_level=2, hidden_channels=8),
    "2x4x4-affine": lambda: Glow((2, 4, 4), num_levels=2, steps_per_level=2, hidden_channels=8),
    "1x4x4-additive-plain-conv": lambda: Glow(
        (1, 4, 4), num_levels=2, steps_per_level=2, hidden_channels=8, coupling="additive", lu=False),
    "2x4x4-no-top-no-edge-bias": lambda: Glow(
        (2, 4, 4), num_levels=2, steps_per_level=1, hidden_channels=8, learn_top=False, edge_bias=False),
    "1x4x4-logit": lambda: Glow(
        (1, 4, 4), num_levels=1, steps_per_level=2, hidden_channels=8, preprocessing="logit"),
}
#: the models small enough for a full Jacobian (D = 16 or 32)
SMALL = [name for name in CONFIGS if "8x8" not in name]


def data(batch, shape, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (0.01 + 0.98 * torch.rand(batch, *shape, generator=g)).to(dtype)


def build(name, dtype=torch.float64, mode="eval", seed=0):
    """The model with its actnorms initialised on a batch, then perturbed (the zero-initialised
    convolutions would otherwise make every coupling and prior a fixed map)."""
    torch.manual_seed(seed)
    model = CONFIGS[name]().to(dtype)
    model.initialize_(data(32, model.event_shape, dtype, seed=seed + 7))
    perturb(model, 0.03, seed)
    model.train(mode == "train")
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip(name, dtype, mode):
    model = build(name, dtype, mode)
    x = data(6, model.event_shape, dtype)
    z, log_det = model.bijector(x)
    assert z.shape == (6, model.num_dims)
    x_back, inv_log_det = model.bijector.inverse(z)
    assert torch.equal(model.bijector.invert(z), x_back)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert (x_back - x).abs().max() <= tol
    torch.testing.assert_close(inv_log_det, -log_det, atol=tol * 10, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", SMALL)
def test_log_det_matches_jacobian(name, mode):
    model = build(name, torch.float64, mode)
    check_log_det(model.bijector, data(2, model.event_shape), atol=1e-8)


def test_log_det_matches_jacobian_while_actnorm_initialises():
    """The first training-mode pass initialises every actnorm from the batch it sees; its log-det
    is that of the initialised map (with the statistics then held fixed, as for batch norm)."""
    torch.manual_seed(0)
    model = CONFIGS["2x4x4-affine"]().double()
    x = data(4, model.event_shape)
    _, log_det = model.bijector(x)
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    torch.testing.assert_close(log_det, jacobian_log_dets(lambda b: model.bijector(b)[0], x),
                               atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ["3x8x8-affine", "1x4x4-additive-plain-conv"])
def test_eval_log_prob_does_not_depend_on_the_batch(name):
    model = build(name)
    x = data(9, model.event_shape)
    full = model.log_prob(x)
    torch.testing.assert_close(model.log_prob(x[:1]), full[:1], atol=1e-10, rtol=0)
    torch.testing.assert_close(model.log_prob(x[3:7]), full[3:7], atol=1e-10, rtol=0)


def test_actnorm_initialisation_normalises_what_reaches_each_actnorm():
    torch.manual_seed(0)
    model = CONFIGS["3x8x8-affine"]()
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert not any(bool(m.initialized) for m in norms)
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.__setitem__(m, o[0])) for m in norms]
    model.train()
    model.log_prob(data(64, model.event_shape, torch.float32))
    for h in hooks:
        h.remove()
    assert all(bool(m.initialized) for m in norms) and len(outputs) == len(norms)
    for m, y in outputs.items():
        torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(m.channels), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.std(dim=(0, 2, 3), correction=0), torch.ones(m.channels),
                                   atol=1e-3, rtol=0)
    before = copy.deepcopy(model.state_dict())
    model.log_prob(data(8, model.event_shape, torch.float32, seed=5))  # no second initialisation
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_zero_initialisation_starts_every_coupling_and_prior_at_its_fixed_map():
    """The last conv of every coupling network and the priors' convs start at zero: the affine
    coupling is then ``y_b = sigmoid(2)·x_b`` (the code's ``sigmoid(h + 2)``), the additive one
    the identity, the split prior a swap of the halves (a standard normal on the factored half)
    and the top prior the identity."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 2, 2)
    s2 = torch.sigmoid(torch.tensor(2.0))
    for layer in (GlowAffineCoupling(8, 4), GlowAdditiveCoupling(8, 4)):
        layer.train()
        y, log_det = layer(x)  # actnorms inside the network initialise here
        affine = isinstance(layer, GlowAffineCoupling)
        torch.testing.assert_close(y[:, :4], x[:, :4], atol=0, rtol=0)
        torch.testing.assert_close(y[:, 4:], x[:, 4:] * (s2 if affine else 1.0), atol=1e-6, rtol=1e-6)
        expected = 4 * 2 * 2 * math.log(s2.item()) if affine else 0.0
        torch.testing.assert_close(log_det, torch.full((3,), expected), atol=1e-5, rtol=0)
    y, log_det = SplitPrior(8)(x)
    assert torch.equal(y, torch.cat((x[:, 4:], x[:, :4]), dim=1)) and not log_det.any()
    y, log_det = LearnedPrior(8, 2, 2)(x)
    assert torch.equal(y, x) and not log_det.any()


def test_glow_affine_coupling_is_the_authors_map():
    """``h = NN(x_a)``, ``t = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)``,
    ``y_b = (x_b + t)·s`` (openai/glow ``revnet2d_step``), log-det ``Σ log s``; inverse
    ``x_b = y_b / s − t``."""
    torch.manual_seed(0)
    layer = GlowAffineCoupling(6, 8).double()
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    layer(x)  # actnorm initialisation
    perturb(layer, 0.3)
    x_a, x_b = x[:, :3], x[:, 3:]
    h = layer.net(x_a)
    assert h.shape == (4, 6, 3, 3)
    t, s = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2)
    y, log_det = layer(x)
    torch.testing.assert_close(y, torch.cat((x_a, (x_b + t) * s), dim=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, torch.log(s).sum(dim=(1, 2, 3)), atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.invert(y)[:, 3:], y[:, 3:] / s - t, atol=1e-12, rtol=0)


def test_glow_net_is_the_authors_f():
    """conv3×3 (edge bias, no conv bias) → actnorm → ReLU → conv1×1 → actnorm → ReLU →
    zero conv3×3 with ``exp(3·logs)``, computed here by hand from the layers' parameters."""
    torch.manual_seed(0)
    layer = GlowAdditiveCoupling(4, 5).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    net = layer.net
    net(x)
    perturb(net, 0.3)
    first, _, second, _, last = net

    def actnorm(m, h):
        return (h + m.bias.view(1, -1, 1, 1)) * torch.exp(m.log_scale).view(1, -1, 1, 1)

    h = F.relu(actnorm(first.actnorm, F.conv2d(edge_pad(x, 3), first.conv.weight)))
    assert first.conv.weight.shape == (5, 3, 3, 3) and first.conv.bias is None
    h = F.relu(actnorm(second.actnorm, F.conv2d(h, second.conv.weight)))
    assert second.conv.weight.shape == (5, 5, 1, 1)
    h = (F.conv2d(edge_pad(h, 3), last.conv.weight) + last.conv.bias.view(1, -1, 1, 1)) \
        * torch.exp(3 * last.logs).view(1, -1, 1, 1)
    torch.testing.assert_close(net(x), h, atol=1e-12, rtol=0)


def test_edge_padding_marks_the_border():
    x = torch.randn(2, 3, 4, 5)
    p = edge_pad(x, 3)
    assert p.shape == (2, 4, 6, 7)
    assert torch.equal(p[:, :3, 1:-1, 1:-1], x) and not p[:, :3, 0].any() and not p[:, :3, :, -1].any()
    inside = torch.zeros(6, 7)
    inside[1:-1, 1:-1] = 1
    assert torch.equal(p[:, 3], (1 - inside).expand(2, 6, 7))
    assert edge_pad(x, 1) is x


def test_split_prior_is_the_learned_gaussian_on_the_factored_half():
    """With the flow's standard normal on ``ε``, the factored half ``z2`` has the density
    ``N(z2; μ(z1), σ(z1)²)`` with ``h = ZeroConv2d(z1)``, ``μ = h[:, 0::2]``, ``log σ = h[:, 1::2]``
    (openai/glow ``split2d_prior``)."""
    torch.manual_seed(0)
    layer = perturb(SplitPrior(6), 0.3).double()
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    z1, z2 = x[:, :3], x[:, 3:]
    h = layer.net(z1)
    mean, logs = h[:, 0::2], h[:, 1::2]
    y, log_det = layer(x)
    assert torch.equal(y[:, 3:], z1)
    eps = y[:, :3]
    density = standard_normal_log_prob(eps.flatten(1)) + log_det
    gaussian = (-0.5 * (math.log(2 * math.pi) + 2 * logs + (z2 - mean) ** 2 / torch.exp(2 * logs)))
    torch.testing.assert_close(density, gaussian.sum(dim=(1, 2, 3)), atol=1e-10, rtol=0)
    check_round_trip(layer, x, atol=1e-12)
    check_log_det(layer, x, atol=1e-10)


def test_learned_top_prior_is_a_gaussian_depending_on_position_through_the_edges():
    torch.manual_seed(0)
    layer = perturb(LearnedPrior(2, 4, 4), 0.3).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    h = layer.net(torch.zeros(1, 4, 4, 4, dtype=torch.float64))
    mean, logs = h[:, :2], h[:, 2:]
    y, log_det = layer(x)
    torch.testing.assert_close(y, (x - mean) * torch.exp(-logs), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, -logs.sum().expand(3), atol=1e-12, rtol=0)
    # the four interior positions of a 4×4 map see no padding: the same mean there
    assert torch.allclose(mean[0, :, 1:3, 1:3], mean[0, :, 1:2, 1:2].expand(2, 2, 2))
    assert not torch.allclose(mean[0, :, 0, 0], mean[0, :, 1, 1])
    check_round_trip(layer, x, atol=1e-12)


def test_conditional_top_prior_adds_a_linear_map_of_the_context_as_the_authors_ycond():
    """openai/glow ``prior``: ``h = conv2d_zeros(0)`` (learntop) ``+ linear_zeros(y_onehot)``
    broadcast over positions; ``μ = h[:, :C]``, ``log σ = h[:, C:]``. The context moves the top
    prior's Gaussian (not only the couplings'), and a context-free map would fail this test."""
    torch.manual_seed(0)
    slot = ContextSlot(3)
    layer = perturb(LearnedPrior(2, 4, 4, context=slot), 0.3).double()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    c = F.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).double()
    slot.value = c
    h = layer.net(torch.zeros(1, 4, 4, 4, dtype=torch.float64)) + (c @ layer.embed.weight.T
                                                                   + layer.embed.bias)[:, :, None, None]
    mean, logs = h[:, :2], h[:, 2:]
    y, log_det = layer(x)
    torch.testing.assert_close(y, (x - mean) * torch.exp(-logs), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, -logs.sum(dim=(1, 2, 3)), atol=1e-12, rtol=0)
    assert not torch.allclose(log_det[0], log_det[1])  # labels 0 and 1: different Gaussians
    check_round_trip(layer, x, atol=1e-12)
    check_log_det(layer, x, atol=1e-10)
    # without learn_top the prior is the context's alone; at the start it is N(0, I)
    fresh = LearnedPrior(2, 4, 4, context=slot, learn_top=False).double()
    assert fresh.net is None
    y, log_det = fresh(x)
    assert torch.equal(y, x) and not log_det.any()
    slot.value = None
    with pytest.raises(ValueError, match="learn_top or a context"):
        LearnedPrior(2, 4, 4, learn_top=False)


def test_zero_conv_starts_at_zero_and_scales_by_exp_three_logs():
    conv = ZeroConv2d(3, 4)
    x = torch.randn(2, 3, 5, 5)
    assert not conv(x).any()
    perturb(conv, 0.2)
    raw = F.conv2d(edge_pad(x, 3), conv.conv.weight, conv.conv.bias)
    torch.testing.assert_close(conv(x), raw * torch.exp(3 * conv.logs).view(1, -1, 1, 1))


def test_preprocessing_is_a_volume_preserving_shift_and_bits_per_dim_follow_the_code():
    """``log p(y)`` of data ``y`` in [0, 1] is the multi-scale flow's density at ``y − 0.5`` with no
    Jacobian term; bits/dim then add ``D ln 256`` as the code's objective does."""
    model = build("2x4x4-affine")
    shift, body = model.bijector
    assert isinstance(shift, Shift) and model.support is None
    y = data(5, model.event_shape)
    z, log_det = body(y - 0.5)
    expected = standard_normal_log_prob(z) + log_det
    torch.testing.assert_close(model.log_prob(y), expected, atol=1e-12, rtol=0)
    d = model.num_dims
    torch.testing.assert_close(bits_per_dim(model.log_prob(y), d),
                               -(expected - d * math.log(256)) / (d * math.log(2)))


def test_architecture_and_latent_order():
    """Each level: squeeze, K × (actnorm, 1×1 conv, coupling), split (not at the last level); the
    latent is ``[ε_1, ε_2, ε_3]`` flattened as MultiScale orders it; the code's CIFAR-10 shapes."""
    model = Glow((3, 32, 32), num_levels=3, steps_per_level=1, hidden_channels=4)
    body = model.bijector[1]
    assert body.latent_shapes == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]
    kinds = [[type(m).__name__ for m in stage] for stage in body.stages]
    step = ["ActNorm", "Invertible1x1Conv", "GlowAffineCoupling"]
    assert kinds == [["Squeeze", *step, "SplitPrior"]] * 2 + [["Squeeze", *step, "LearnedPrior"]]
    assert model.config["hidden_channels"] == 4 and model.config["learn_top"]
    x = data(2, model.event_shape, torch.float32)
    z = model.eval().encode(x)
    assert z.shape == (2, 3 * 32 * 32)
    assert (model.decode(z) - x).abs().max() < 1e-4


def test_every_parameter_gets_a_gradient_after_one_step():
    """At initialisation the zero convs block the gradient of everything before them in the
    coupling networks; after one step every parameter has a non-zero gradient."""
    torch.manual_seed(0)
    model = CONFIGS["2x4x4-affine"]()
    x = data(16, model.event_shape, torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(2):
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            if step == 1:
                assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient after one step"
        opt.step()


@pytest.mark.parametrize("name", ["3x8x8-affine", "1x4x4-additive-plain-conv"])
def test_state_dict_round_trip_keeps_actnorm_initialised(name):
    model = build(name, torch.float32)
    x = data(4, model.event_shape, torch.float32)
    torch.manual_seed(123)
    other = CONFIGS[name]()
    other.load_state_dict(model.state_dict())
    assert all(bool(m.initialized) for m in other.modules() if isinstance(m, ActNorm))
    other.train()  # a training-mode pass must not initialise the loaded actnorms again
    torch.testing.assert_close(other.log_prob(x), model.eval().log_prob(x), atol=0, rtol=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


def test_sample_shapes_and_temperature():
    model = build("3x8x8-affine")
    model.train()
    s = model.sample(5, temperature=0.7)
    assert s.shape == (5, 3, 8, 8) and torch.isfinite(s).all() and model.training
    mode = model.sample(2, 0.0)  # the prior's mode, the same for every row (to round-off)
    torch.testing.assert_close(mode[0], mode[1], atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(0)
    z = model.encode(model.sample(100, temperature=0.5, generator=g))
    assert abs(z.std().item() - 0.5) < 0.05


def test_initialize_resets_and_restores_modes():
    model = build("2x4x4-affine")
    model.eval()
    x = data(16, model.event_shape)
    model.initialize_(x)
    assert not any(m.training for m in model.modules())
    first = next(m for m in model.modules() if isinstance(m, ActNorm))
    torch.testing.assert_close(first.bias, -F.pixel_unshuffle(x - 0.5, 2).mean(dim=(0, 2, 3)))


def test_memory_saving_gives_plain_autograd_gradients():
    torch.manual_seed(0)
    plain = CONFIGS["2x4x4-affine"]().double()
    x = data(8, plain.event_shape)
    plain.initialize_(x)
    perturb(plain, 0.03)
    saving = copy.deepcopy(plain).memory_saving_(True)
    assert saving.memory_saving
    grads = []
    for model in (plain, saving):
        model.train()
        model.zero_grad()
        (-model.log_prob(x).mean()).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-10)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        Glow((3, 12, 12), num_levels=3, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match="coupling"):
        Glow((3, 8, 8), num_levels=2, steps_per_level=1, hidden_channels=4, coupling="spline")
    with pytest.raises(ValueError, match="preprocessing"):
        Glow((3, 8, 8), num_levels=2, steps_per_level=1, hidden_channels=4, preprocessing="dequant")
    with pytest.raises(ValueError, match="num_levels"):
        Glow((3, 8, 8), num_levels=0)
    with pytest.raises(ValueError, match="even"):
        SplitPrior(3)
    with pytest.raises(ValueError, match="expects"):
        SplitPrior(4)(torch.randn(2, 6, 2, 2))


# ---------------------------------------------------------------- the 1×1 convolution, LU or plain


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("shape", [(5, 3, 3), (6,)])
def test_conv1x1_round_trip_and_log_det(lu, shape):
    torch.manual_seed(0)
    conv = perturb(Invertible1x1Conv(shape[0], lu=lu), 0.3).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    check_round_trip(conv, x, atol=1e-12)
    check_log_det(conv, x, atol=1e-10)
    expected = torch.linalg.slogdet(conv.weight())[1] * math.prod(shape[1:])
    torch.testing.assert_close(conv(x)[1], expected.expand(3), atol=1e-10, rtol=0)


def test_lu_and_plain_conv1x1_agree_at_the_same_weight():
    """The same starting rotation for the same generator; at any LU weight, the plain conv holding
    that matrix gives the same output and the same log-det."""
    lu = Invertible1x1Conv(6, generator=torch.Generator().manual_seed(3)).double()
    plain = Invertible1x1Conv(6, generator=torch.Generator().manual_seed(3), lu=False).double()
    torch.testing.assert_close(plain.weight(), lu.weight(), atol=1e-6, rtol=0)
    assert set(dict(plain.named_parameters())) == {"w"}
    perturb(lu, 0.3)
    with torch.no_grad():
        plain.w.copy_(lu.weight())
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    (y_lu, ld_lu), (y_plain, ld_plain) = lu(x), plain(x)
    torch.testing.assert_close(y_plain, y_lu, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_plain, ld_lu, atol=1e-10, rtol=0)
    torch.testing.assert_close(plain.invert(y_plain), lu.invert(y_lu), atol=1e-12, rtol=0)
