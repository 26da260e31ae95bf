"""Every bijector: exact inverse and log-det against the autograd Jacobian, in train and eval
mode, float32 and float64."""

from __future__ import annotations

import ast
import copy
import pathlib

import pytest
import torch

from helpers import check_log_det, check_round_trip, perturb
from realnvp import bijectors
from realnvp.bijectors import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Bijector,
    Checkerboard,
    HalfCouplings,
    Halves,
    Inverse,
    Invertible1x1Conv,
    Logit,
    Sequential,
    Squeeze,
    checkerboard,
)
from realnvp.nets import MLP, ResNet


def image_coupling(cls, mask_kind, parity, shape=(2, 4, 4)):
    c, h, w = shape
    mask = Checkerboard(c, h, w, parity) if mask_kind == "checkerboard" else Halves(c, bool(parity))
    mult = 2 if cls is AffineCoupling else 1
    net = ResNet(mask.in_features, mult * mask.out_features, hidden=8, num_blocks=1)
    return cls(mask, net)


def vector_coupling(cls, flip, dim=6):
    mask = Halves(dim, flip)
    mult = 2 if cls is AffineCoupling else 1
    return cls(mask, MLP(mask.in_features, mult * mask.out_features, hidden=16, num_layers=2))


# name -> (factory, example shape, input sampler)
def _normal(shape, g):
    return torch.randn(shape, generator=g)


def _unit(shape, g):
    return torch.rand(shape, generator=g) * 0.98 + 0.01


LAYERS = {
    "affine-checkerboard-0": (lambda: image_coupling(AffineCoupling, "checkerboard", 0), (2, 4, 4)),
    "affine-checkerboard-1": (lambda: image_coupling(AffineCoupling, "checkerboard", 1), (2, 4, 4)),
    "affine-channel-first": (lambda: image_coupling(AffineCoupling, "channel", 0), (2, 4, 4)),
    "affine-channel-second": (lambda: image_coupling(AffineCoupling, "channel", 1), (2, 4, 4)),
    "affine-channel-odd": (
        lambda: image_coupling(AffineCoupling, "channel", 1, (3, 4, 4)), (3, 4, 4)),
    "affine-checkerboard-3x8x8": (
        lambda: image_coupling(AffineCoupling, "checkerboard", 0, (3, 8, 8)), (3, 8, 8)),
    "additive-checkerboard": (lambda: image_coupling(AdditiveCoupling, "checkerboard", 1), (2, 4, 4)),
    "additive-channel": (lambda: image_coupling(AdditiveCoupling, "channel", 0), (2, 4, 4)),
    "affine-vector-0": (lambda: vector_coupling(AffineCoupling, False), (6,)),
    "affine-vector-1": (lambda: vector_coupling(AffineCoupling, True), (6,)),
    "affine-vector-odd": (lambda: vector_coupling(AffineCoupling, True, 5), (5,)),
    "additive-vector": (lambda: vector_coupling(AdditiveCoupling, False), (6,)),
    "squeeze": (Squeeze, (2, 4, 4)),
    "batchnorm-image": (lambda: BatchNorm(2), (2, 4, 4)),
    "batchnorm-vector": (lambda: BatchNorm(6), (6,)),
    "actnorm-image": (lambda: ActNorm(2), (2, 4, 4)),
    "actnorm-vector": (lambda: ActNorm(6), (6,)),
    "conv1x1-image": (lambda: Invertible1x1Conv(3), (3, 4, 4)),
    "conv1x1-vector": (lambda: Invertible1x1Conv(6), (6,)),
    "logit": (lambda: Logit(0.05), (2, 4, 4)),
    "logit-alpha0": (lambda: Logit(0.0), (6,)),
    "half-couplings-vector": (
        lambda: HalfCouplings(*(vector_coupling(cls, flip, 5) for cls, flip in (
            (AffineCoupling, False), (AffineCoupling, True),
            (AffineCoupling, True), (AdditiveCoupling, False)))),
        (5,),
    ),
    "half-couplings-image": (
        lambda: HalfCouplings(image_coupling(AffineCoupling, "channel", 0, (3, 4, 4)),
                              image_coupling(AffineCoupling, "channel", 1, (3, 4, 4))),
        (3, 4, 4),
    ),
    "sequential": (
        lambda: Sequential(Logit(), image_coupling(AffineCoupling, "checkerboard", 0), BatchNorm(2),
                           Squeeze(), Invertible1x1Conv(8), ActNorm(8)),
        (2, 4, 4),
    ),
}
UNIT_INPUT = {"logit", "logit-alpha0", "sequential"}


def make(name, dtype, mode, batch=5, seed=0):
    factory, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = factory()
    perturb(layer, 0.3 if "norm" not in name else 0.1, seed)
    layer = layer.to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    sampler = _unit if name in UNIT_INPUT else _normal
    x = (sampler((batch, *shape), g) * (1 if name in UNIT_INPUT else 1.5)).to(dtype)
    layer.train(mode == "train")
    if mode == "eval":
        # Give batch norms and actnorm realistic statistics before switching to evaluation.
        layer.train()
        with torch.no_grad():
            layer(sampler((16, *shape), g).to(dtype))
        layer.eval()
    return layer, x


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_round_trip(name, dtype, mode):
    layer, x = make(name, dtype, mode)
    check_round_trip(layer, x, atol=1e-5 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_invert_is_the_inverse_without_its_log_det(name, mode):
    layer, x = make(name, torch.float64, mode)
    y, _ = layer(x)
    assert torch.equal(layer.invert(y), layer.inverse(y)[0])


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_log_det_matches_jacobian(name, mode):
    layer, x = make(name, torch.float64, mode, batch=3)
    check_log_det(layer, x, atol=1e-6)


@pytest.mark.parametrize("name", ["batchnorm-image", "batchnorm-vector", "actnorm-image"])
def test_float32_log_det_close_to_float64(name):
    layer, x = make(name, torch.float32, "eval")
    ref, _ = make(name, torch.float64, "eval")
    torch.testing.assert_close(layer(x)[1].double(), ref(x.double())[1], atol=1e-4, rtol=1e-5)


def test_squeeze_ordering_and_partition():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    # channel 2i + j holds offset (i, j) of each 2x2 block
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    for c in (1, 2, 3):
        b = checkerboard(4, 4, 0).expand(1, c, 4, 4)
        sq, _ = Squeeze()(b)
        half = sq.shape[1] // 2
        for part in (sq[:, :half], sq[:, half:]):
            # a channel half is never one colour of the checkerboard
            assert 0 < part.mean() < 1


def test_checkerboard_mask_layout():
    b = checkerboard(3, 3, 0)[0, 0]
    assert b.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert (checkerboard(3, 3, 1)[0, 0] + b).eq(1).all()


def test_coupling_transforms_only_the_active_part():
    layer, x = make("affine-checkerboard-0", torch.float64, "eval")
    y, _ = layer(x)
    b = layer.mask.b.bool().expand_as(x)
    assert torch.equal(y[b], x[b])
    assert not torch.allclose(y[~b], x[~b])
    layer, x = make("affine-channel-second", torch.float64, "eval")
    y, _ = layer(x)
    assert torch.equal(y[:, 1:], x[:, 1:]) and not torch.allclose(y[:, :1], x[:, :1])


def test_alternating_couplings_transform_every_unit():
    torch.manual_seed(0)
    layers = Sequential(image_coupling(AffineCoupling, "checkerboard", 0),
                        image_coupling(AffineCoupling, "checkerboard", 1))
    perturb(layers)
    x = torch.randn(2, 2, 4, 4)
    y, _ = layers(x)
    assert ((y - x).abs() > 1e-6).all()


def test_scale_is_tanh_bounded():
    layer, x = make("affine-vector-0", torch.float64, "eval")
    with torch.no_grad():
        layer.net.net[-1].weight_g.mul_(1e4)
        layer.rescale.fill_(2.0)
    _, log_det = layer(x * 100)
    assert (log_det.abs() <= 2.0 * layer.mask.out_features + 1e-9).all()


def test_batchnorm_uses_batch_stats_in_training_and_running_in_eval():
    bn = BatchNorm(3, momentum=0.5)
    x = torch.randn(64, 3, 4, 4) * 3 + 2
    y, log_det = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-3, rtol=0)
    var = x.var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(log_det, (-0.5 * torch.log(var + 1e-4)).sum().expand(64) * 16)
    torch.testing.assert_close(bn.running_mean, 0.5 * x.mean(dim=(0, 2, 3)))
    bn.eval()
    single, _ = bn(x[:1])
    assert torch.allclose(single, bn(x)[0][:1])


def test_batchnorm_refuses_single_value_in_training():
    with pytest.raises(ValueError, match="more than one value"):
        BatchNorm(4)(torch.randn(1, 4))
    BatchNorm(4).eval()(torch.randn(1, 4))  # fine in eval mode


def test_actnorm_data_dependent_init():
    an = ActNorm(3)
    x = torch.randn(32, 3, 4, 4) * 5 - 1
    y, _ = an(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(an.initialized)
    before = an.bias.detach().clone()
    an(torch.randn(8, 3, 4, 4))
    assert torch.equal(before, an.bias)
    state = an.state_dict()
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    assert bool(fresh.initialized)


def test_conv1x1_starts_orthogonal_and_log_det_is_slogdet():
    conv = Invertible1x1Conv(5)
    w = conv.weight().double()
    torch.testing.assert_close(w @ w.T, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
    perturb(conv)
    x = torch.randn(2, 5, 3, 3)
    _, log_det = conv(x)
    expected = torch.linalg.slogdet(conv.weight().double())[1] * 9
    torch.testing.assert_close(log_det.double(), expected.expand(2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [torch.randn(2, 3, 4, 4), torch.randn(2, 2, 3, 4)])
def test_layers_refuse_wrong_shapes(bad):
    layers = [BatchNorm(2), ActNorm(2), Invertible1x1Conv(2)] if bad.shape[1] == 3 else [Squeeze()]
    for layer in layers:
        with pytest.raises(ValueError):
            layer(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        Halves(1)
    with pytest.raises(ValueError):
        Checkerboard(1, 1, 1)
    with pytest.raises(ValueError):
        Checkerboard(1, 4, 4, parity=2)
    with pytest.raises(ValueError):
        Logit(0.5)
    with pytest.raises(ValueError):
        BatchNorm(2, momentum=0.0)


def test_batchnorm_eval_with_momentum_one_reproduces_the_training_batch():
    bn = BatchNorm(3, momentum=1.0)
    x = torch.randn(16, 3, 4, 4) * 2 + 1
    y_train, ld_train = bn(x)
    bn.eval()
    y_eval, ld_eval = bn(x)
    torch.testing.assert_close(y_eval, y_train)
    torch.testing.assert_close(ld_eval, ld_train)


@pytest.mark.parametrize("mask,shape", [(Halves(5, False), (5,)), (Halves(5, True), (5,)),
                                        (Halves(4, True), (4, 3, 3)), (Checkerboard(2, 4, 4, 1), (2, 4, 4))],
                         ids=["halves-5", "halves-5-flip", "halves-channels", "checkerboard"])
def test_mask_split_agrees_with_condition_and_active(mask, shape):
    # the coupling uses split/merge(x, a, cond); the memory-saving backward uses condition/active/merge(x, a)
    x = torch.randn(3, *shape)
    cond, active = mask.split(x)
    assert torch.equal(cond, mask.condition(x)) and torch.equal(active, mask.active(x))
    assert cond.shape[1] == mask.in_features and active.shape[1] == mask.out_features
    assert torch.equal(mask.merge(x, active, cond), mask.merge(x, active))
    assert torch.equal(mask.merge(x, active), x)


@pytest.mark.parametrize("name", ["half-couplings-vector", "half-couplings-image"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_half_couplings_equal_the_sequential_chain(name, mode):
    # the same map, log-det, gradients and state_dict as Sequential over the same couplings
    chain, x = make(name, torch.float64, mode)
    x.requires_grad_(True)
    seq = Sequential(*chain.layers)
    assert list(chain.state_dict()) == list(seq.state_dict())
    outs = []
    for layer in (chain, seq):
        y, log_det = layer(x)
        grads = torch.autograd.grad((y * y.detach().cos()).sum() + log_det.sum(), [x, *chain.parameters()])
        back, inv_log_det = layer.inverse(y.detach())
        outs.append((y, log_det, back, inv_log_det, *grads))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_half_couplings_memory_saving_matches_plain_autograd():
    chain, x = make("half-couplings-vector", torch.float64, "train", batch=8)
    x.requires_grad_(True)
    grads = []
    for saving in (False, True):
        chain.memory_saving = saving
        y, log_det = chain(x)
        grads.append(torch.autograd.grad(y.pow(2).sum() + log_det.sum(), [x, *chain.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_half_couplings_refuse_other_layers():
    with pytest.raises(ValueError, match="Halves masks"):
        HalfCouplings(vector_coupling(AffineCoupling, False, 6), vector_coupling(AffineCoupling, False, 5))
    with pytest.raises(ValueError, match="Halves masks"):
        HalfCouplings(image_coupling(AffineCoupling, "checkerboard", 0))
    with pytest.raises(ValueError, match="Halves masks"):
        HalfCouplings(vector_coupling(AffineCoupling, False, 6), BatchNorm(6))
    with pytest.raises(ValueError, match="at least one"):
        HalfCouplings()


# --- the contract: inverse and invert written once; no module above the layers names them ------


class _Shift(Bijector):
    """A layer written against the contract alone: ``forward`` and ``_inverse``, nothing else."""

    recomputable = True

    def __init__(self, features: int):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.linspace(-1, 1, features))
        self.log_scale = torch.nn.Parameter(torch.full((features,), 0.3))
        self.asked: list[bool] = []

    def forward(self, x):
        return (x + self.shift) * torch.exp(self.log_scale), self.log_scale.sum().expand(len(x))

    def _inverse(self, y, with_log_det):
        self.asked.append(with_log_det)
        x = y * torch.exp(-self.log_scale) - self.shift
        return x, (-self.log_scale.sum().expand(len(y)) if with_log_det else None)


def test_a_layer_with_forward_and_inverse_only_gets_inverse_and_invert():
    torch.manual_seed(0)
    layer = _Shift(3).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y, log_det = layer(x)
    back, inv_log_det = layer.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_log_det, -log_det)
    assert torch.equal(layer.invert(y), back)
    assert layer.asked == [True, False]  # invert asks for no log-det
    check_log_det(layer, x)
    # in chains, and swapped, through the same two methods
    chain = Sequential(layer, _Shift(3).double())
    z, ld = chain(x)
    torch.testing.assert_close(chain.inverse(z)[0], x)
    torch.testing.assert_close(chain.inverse(z)[1], -ld)
    assert torch.equal(chain.invert(z), chain.inverse(z)[0])
    swapped = Inverse(layer)
    torch.testing.assert_close(swapped(y)[0], x)
    torch.testing.assert_close(swapped.inverse(x)[0], y)
    assert torch.equal(swapped.invert(x), swapped.inverse(x)[0])


def test_a_contract_only_layer_in_a_memory_saving_chain():
    """Memory-saving backprop recomputes a layer it knows nothing about through the generic hooks
    (``recomputable`` and its own inverse): gradients equal plain autograd's."""
    torch.manual_seed(0)
    plain = perturb(Sequential(_Shift(4), AffineCoupling(Halves(4), MLP(2, 4, hidden=8)), _Shift(4),
                               AffineCoupling(Halves(4, flip=True), MLP(2, 4, hidden=8))), 0.1).double()
    saving = copy.deepcopy(plain)
    saving.memory_saving = True
    x = torch.randn(6, 4, dtype=torch.float64)
    outs = []
    for model in (plain, saving):
        xi = x.clone().requires_grad_(True)
        y, log_det = model(xi)
        ((y ** 2).sum() - log_det.sum()).backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-7, atol=1e-9)
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    assert any(not asked for asked in saving[0].asked)  # recomputed through invert


def test_no_layer_writes_inverse_or_invert_again():
    """Only :class:`Bijector` defines ``inverse`` and ``invert``; every layer defines
    ``_inverse``."""
    layers = [getattr(bijectors, n) for n in bijectors.__all__]
    layers = [c for c in layers if isinstance(c, type) and issubclass(c, Bijector)]
    assert len(layers) > 10
    for cls in layers:
        for name in ("inverse", "invert"):
            owner = next(k for k in cls.__mro__ if name in vars(k))
            assert owner is Bijector, (cls.__name__, name, owner.__name__)
        if cls is not Bijector:
            assert next(k for k in cls.__mro__ if "_inverse" in vars(k)) is not Bijector, cls


SRC = pathlib.Path(bijectors.__file__).parent.parent


@pytest.mark.parametrize("path", ["bijectors/invertible_backprop.py", "bijectors/base.py",
                                  "models/flow.py"])
def test_generic_modules_import_no_concrete_layer_and_no_private_name(path):
    """Memory-saving backprop, the bijector contract and the flow work through the layers' hooks:
    they import no concrete layer (class or module) and no private name of another module."""
    concrete = {n for n in bijectors.__all__
                if isinstance(getattr(bijectors, n), type) and issubclass(getattr(bijectors, n), Bijector)
                and n not in ("Bijector", "Sequential")}
    layer_modules = {"coupling", "linear", "masks", "multiscale", "normalization", "preprocessing",
                     "squeeze"}
    tree = ast.parse((SRC / path).read_text())
    imported: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported += [(node.module or "", a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            imported += [(a.name, "") for a in node.names]
    assert imported
    for module, name in imported:
        assert name not in concrete, (path, module, name)
        assert not name.startswith("_") or name == "__future__", (path, module, name)
        assert not set(module.split(".")) & layer_modules, (path, module, name)
    text = (SRC / path).read_text()
    for name in concrete | {"_Coupling", "_last_stats"}:  # nor names them in code
        code = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
        code += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        assert name not in code, (path, name)
    assert "SUPPORTED" not in text
