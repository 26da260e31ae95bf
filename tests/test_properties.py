"""Property-based checks (hypothesis) over random layer configurations, shapes, dtypes and modes:
exact inverses, log-determinants against the autograd Jacobian, finite likelihoods at the edges of
the data, checkpoints that give back exactly what was saved or refuse.

Shapes are tiny (C ≤ 4, H, W ∈ {2, 4}, D ≤ 7) so that a per-example Jacobian costs little.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import check_log_det, check_round_trip, perturb, same
from realnvp import RealNVP, VectorRealNVP, checkpoint
from realnvp.bijectors import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Checkerboard,
    Dequantize,
    Halves,
    Invertible1x1Conv,
    Logit,
    Sequential,
    Squeeze,
)
from realnvp.nets import MLP, ResNet

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([torch.float32, torch.float64])
MODES = st.sampled_from(["train", "eval"])
TOLERANCE = {torch.float32: 2e-4, torch.float64: 1e-8}



def prepare(layer, shape, dtype, mode, seed, scale=0.3, unit=False, batch=3):
    """Perturbed layer in ``dtype`` and ``mode`` (eval: after a training pass has set its running
    statistics) and an input batch of ``shape``."""
    torch.manual_seed(seed)
    perturb(layer, scale, seed)
    layer = layer.to(dtype)
    g = torch.Generator().manual_seed(seed + 1)

    def sample(n):
        x = torch.rand((n, *shape), generator=g) * 0.98 + 0.01 if unit \
            else torch.randn((n, *shape), generator=g) * 1.5
        return x.to(dtype)

    if mode == "eval":
        layer.train()
        with torch.no_grad():
            layer(sample(16))
    layer.train(mode == "train")
    return layer, sample(batch)


def check(layer, x, dtype):
    check_round_trip(layer, x, atol=TOLERANCE[dtype] * max(1.0, x.abs().max().item()))
    if dtype == torch.float64:
        check_log_det(layer, x, atol=1e-6)


# ----------------------------------------------------------------------------- single layers


@st.composite
def image_couplings(draw):
    c = draw(st.integers(1, 4))
    h, w = draw(st.sampled_from([2, 4])), draw(st.sampled_from([2, 4]))
    parity = draw(st.integers(0, 1))
    if c >= 2 and draw(st.booleans()):
        mask = Halves(c, flip=bool(parity))
    else:
        mask = Checkerboard(c, h, w, parity)
    cls = draw(st.sampled_from([AffineCoupling, AdditiveCoupling]))
    out = mask.out_features * (2 if cls is AffineCoupling else 1)
    net = ResNet(mask.in_features, out, hidden=draw(st.integers(2, 6)),
                 num_blocks=draw(st.integers(0, 2)), out_bias=draw(st.booleans()))
    return cls(mask, net), (c, h, w)


@st.composite
def vector_couplings(draw):
    d = draw(st.integers(2, 7))
    mask = Halves(d, flip=draw(st.booleans()))
    cls = draw(st.sampled_from([AffineCoupling, AdditiveCoupling]))
    out = mask.out_features * (2 if cls is AffineCoupling else 1)
    net = MLP(mask.in_features, out, hidden=draw(st.integers(2, 8)), num_layers=draw(st.integers(0, 2)))
    return cls(mask, net), (d,)


@FAST
@given(case=st.one_of(image_couplings(), vector_couplings()), dtype=DTYPES, mode=MODES,
       seed=st.integers(0, 2**16))
def test_coupling_round_trip_and_log_det(case, dtype, mode, seed):
    layer, shape = case
    layer, x = prepare(layer, shape, dtype, mode, seed)
    check(layer, x, dtype)


@st.composite
def elementwise_layers(draw):
    c = draw(st.integers(1, 4))
    shape = draw(st.sampled_from([(c,), (c, 2, 2), (c, 4, 2), (c, 4, 4)]))
    if c == 1 and len(shape) == 1:
        shape = (1, 2, 2)  # batch norm in training needs more than one value per channel
    kind = draw(st.sampled_from(["batchnorm", "actnorm", "conv1x1", "squeeze"]))
    if kind == "squeeze":
        return Squeeze(), (c, 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))), 0.3
    if kind == "batchnorm":
        return BatchNorm(c, momentum=draw(st.sampled_from([0.1, 0.5, 1.0]))), shape, 0.1
    if kind == "actnorm":
        return ActNorm(c), shape, 0.1
    return Invertible1x1Conv(c, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))), \
        shape, 0.3


@FAST
@given(case=elementwise_layers(), dtype=DTYPES, mode=MODES, seed=st.integers(0, 2**16))
def test_normalisation_and_linear_round_trip_and_log_det(case, dtype, mode, seed):
    layer, shape, scale = case
    layer, x = prepare(layer, shape, dtype, mode, seed, scale=scale)
    check(layer, x, dtype)


@FAST
@given(alpha=st.sampled_from([0.0, 0.01, 0.05, 0.2]), d=st.integers(1, 7), dtype=DTYPES,
       seed=st.integers(0, 2**16))
def test_logit_round_trip_and_log_det(alpha, d, dtype, seed):
    layer, x = prepare(Sequential(Logit(alpha)), (d,), dtype, "eval", seed, unit=True)
    check(layer, x, dtype)


# ----------------------------------------------------------------------------- whole models


@st.composite
def image_models(draw):
    c = draw(st.integers(1, 4))
    h, w = draw(st.sampled_from([2, 4])), draw(st.sampled_from([2, 4]))
    num_scales = draw(st.integers(1, 2))
    assume(h // 2 ** (num_scales - 1) >= 2 and w % 2 ** (num_scales - 1) == 0)
    alpha = draw(st.sampled_from([None, 0.0, 0.05]))
    model = RealNVP((c, h, w), num_scales=num_scales, hidden_channels=draw(st.integers(2, 3)),
                    num_blocks=1, coupling=draw(st.sampled_from(["affine", "additive"])),
                    batch_norm=draw(st.booleans()), logit_alpha=alpha)
    return model, (c, h, w), alpha is not None


@st.composite
def vector_models(draw):
    model = VectorRealNVP(draw(st.integers(2, 7)), num_couplings=draw(st.integers(1, 4)),
                          hidden=draw(st.integers(2, 8)), num_layers=draw(st.integers(1, 2)),
                          coupling=draw(st.sampled_from(["affine", "additive"])),
                          batch_norm=draw(st.booleans()))
    return model, model.event_shape, False


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.filter_too_much])
@given(case=st.one_of(image_models(), vector_models()), dtype=DTYPES, mode=MODES,
       seed=st.integers(0, 2**16))
def test_whole_model_round_trip_and_log_det(case, dtype, mode, seed):
    model, shape, unit = case
    model, x = prepare(model, shape, dtype, mode, seed, scale=0.05, unit=unit, batch=2)
    check(model.bijector, x, dtype)
    if mode == "eval":
        log_p = model.log_prob(x)
        assert log_p.shape == (2,) and torch.isfinite(log_p).all()
        back = model.decode(model.encode(x))
        assert (back - x).abs().max() <= TOLERANCE[dtype] * 10


# ----------------------------------------------------------------------------- numerical edges


def trained_like(model, unit=True, seed=0):
    """Eval mode after a few training-mode passes (realistic running statistics)."""
    torch.manual_seed(seed)
    perturb(model, 0.05, seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            x = torch.rand(16, *model.event_shape) if unit else torch.randn(16, *model.event_shape)
            model.log_prob(x.to(next(model.parameters()).dtype))
    return model.eval()


@pytest.fixture(scope="module")
def image_models_eval():
    """(alpha, dtype) -> an image model in eval mode."""
    out = {}
    for alpha in (0.05, 0.0):
        model = trained_like(RealNVP((2, 4, 4), num_scales=2, hidden_channels=3, num_blocks=1,
                                     logit_alpha=alpha))
        out[alpha, torch.float32] = model
        out[alpha, torch.float64] = copy.deepcopy(model).double()
    return out


def inside(value: float, dtype, low: float, high: float) -> float:
    """``value`` rounded to ``dtype``, moved inward by one ulp if rounding took it outside."""
    t = torch.tensor(value, dtype=dtype)
    if t.item() < low:
        t = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
    if t.item() > high:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return t.item()


@settings(max_examples=25, deadline=None)
@given(alpha=st.sampled_from([0.05, 0.0]), dtype=DTYPES,
       values=st.lists(st.sampled_from(["zero", "one", "low-margin", "high-margin", "random"]),
                       min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_log_prob_is_finite_for_every_valid_input(image_models_eval, alpha, dtype, values, seed):
    model = image_models_eval[alpha, dtype]
    low, high = model.support
    g = torch.Generator().manual_seed(seed)
    fill = {"zero": 0.0, "one": 1.0, "low-margin": inside(low, dtype, low, high),
            "high-margin": inside(high, dtype, low, high)}
    batch = []
    for v in values:
        if v == "random":  # a random mixture of the extremes and the inside
            pick = torch.randint(0, 3, (2, 4, 4), generator=g)
            x = torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, torch.rand(2, 4, 4, generator=g)))
        else:
            x = torch.full((2, 4, 4), fill[v], dtype=torch.float64)
        batch.append(x.to(dtype))
    x = torch.stack(batch)
    log_p = model.log_prob(x)
    assert torch.isfinite(log_p).all(), (values, log_p)


def test_all_black_and_all_white_images_have_finite_likelihood(image_models_eval):
    deq = Dequantize(17)
    for (_, dtype), model in image_models_eval.items():
        for level in (0, 16):
            y, log_det = deq(torch.full((4, 2, 4, 4), level, dtype=dtype))
            assert torch.isfinite(model.log_prob(y) + log_det).all()


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 256), noise=st.sampled_from(["zero", "largest", "random"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_dequantize_extremes_stay_in_the_unit_interval(k, noise, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, k, (3, 5), generator=g).to(dtype)
    x[0, 0], x[0, 1] = 0, k - 1
    largest = 1 - torch.finfo(dtype).eps / 2  # the largest u that torch.rand can return
    u = {"zero": torch.zeros_like(x), "largest": torch.full_like(x, largest),
         "random": torch.rand(x.shape, generator=g).to(dtype)}[noise]
    y, _ = Dequantize(k)(x, noise=u)
    assert y.min() >= 0 and y.max() < 1
    if noise == "zero":
        assert y[0, 0] == 0
    assert torch.equal(Dequantize(k).inverse(y)[0], x)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 256), bad=st.sampled_from(["above", "below", "fraction", "nan", "inf"]))
def test_dequantize_refuses_what_is_not_a_level(k, bad):
    x = torch.zeros(2, 3)
    x[1, 2] = {"above": k, "below": -1, "fraction": 0.5, "nan": math.nan, "inf": math.inf}[bad]
    with pytest.raises(ValueError, match=rf"integer levels in \[0, {k - 1}\], got"):
        Dequantize(k)(x)


@settings(max_examples=25, deadline=None)
@given(alpha=st.sampled_from([0.0, 0.05, 0.3]), dtype=DTYPES, z=st.floats(-1e4, 1e4))
def test_logit_is_finite_at_the_ends_of_its_domain_and_far_out(alpha, dtype, z):
    logit = Logit(alpha)
    margin = alpha / (1 - 2 * alpha)
    ends = torch.tensor([[-margin, 1 + margin, 0.0, 1.0]], dtype=dtype)
    out, log_det = logit(ends)
    assert torch.isfinite(out).all() and torch.isfinite(log_det).all()
    y, log_det = logit.inverse(torch.tensor([[z]], dtype=dtype))
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    assert -margin - 1e-6 <= y.item() <= 1 + margin + 1e-6


@settings(max_examples=25, deadline=None)
@given(rescale=st.floats(1.0, 20.0), input_scale=st.floats(1.0, 1e3), flip=st.booleans(),
       seed=st.integers(0, 2**16))
def test_affine_coupling_with_large_scales_and_large_inputs(rescale, input_scale, flip, seed):
    torch.manual_seed(seed)
    layer = AffineCoupling(Halves(4, flip), MLP(2, 4, hidden=8, num_layers=1, out_scale=1.0)).double()
    with torch.no_grad():
        layer.rescale.fill_(rescale)
    x = torch.randn(3, 4, dtype=torch.float64) * input_scale
    y, log_det = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    assert log_det.abs().max() <= 2 * rescale + 1e-9  # |s| <= rescale on each of 2 entries
    x_back, _ = layer.inverse(y)
    mask = layer.mask
    assert torch.equal(mask.condition(x_back), mask.condition(x))  # passed through untouched
    # x = (y − t)·exp(−s) amplifies the rounding of y − t by exp(−s): that much error, no more
    s, t = layer.scale_and_shift(mask.condition(x), x)
    eps = torch.finfo(torch.float64).eps
    bound = 8 * eps * ((mask.active(y).abs() + t.abs()) * torch.exp(-s) + mask.active(x).abs())
    assert ((mask.active(x_back) - mask.active(x)).abs() <= bound).all()
    check_log_det(layer, x, atol=1e-6 * max(1.0, rescale))


@settings(max_examples=10, deadline=None)
@given(input_scale=st.sampled_from([1e2, 1e4]), seed=st.integers(0, 2**16))
def test_unconstrained_models_take_large_inputs(input_scale, seed):
    """Far outside the data the inverse stays exact in float64; in float32 it loses what the
    map's conditioning makes it lose. Inputs of 1e4 saturate every tanh scale, and the round
    trip amplifies round-off about 1.7e4-fold (measured over 6000 cases: worst error 3.8e-12
    of max|x| in float64 = 1.7e4 ulps, 2.1e-3 in float32 = 1.7e4 ulps), so float32 is held to a
    1e-2 bound that a wrong inverse breaks and round-off does not (a fixed 1e-4 failed 0.5-0.8%
    of the cases)."""
    model = trained_like(RealNVP((1, 4, 4), num_scales=2, hidden_channels=2, num_blocks=1,
                                 logit_alpha=None), unit=False, seed=seed % 7)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * input_scale
    assert torch.isfinite(model.log_prob(x)).all()
    size = x.abs().max()
    back = model.decode(model.encode(x))
    assert torch.isfinite(back).all() and (back - x).abs().max() <= 1e-2 * size
    model, x = model.double(), x.double()
    assert torch.isfinite(model.log_prob(x)).all()
    back = model.decode(model.encode(x))
    assert (back - x).abs().max() <= 1e-9 * size


# ----------------------------------------------------------------------------- checkpoints

CKPT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.uint8, torch.int8, torch.bool]


@st.composite
def tensor_dicts(draw):
    out = {}
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(CKPT_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        t = torch.randn(shape, generator=g) * 50
        out[f"{draw(st.sampled_from(['model', 'optim.0', 'rng']))}.t{i}"] = \
            t.to(dtype) if dtype.is_floating_point else t.round().clamp(-100, 100).to(dtype)
    return out


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                               max_size=3),
                    max_leaves=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=tensor_dicts(), meta=st.dictionaries(st.text(max_size=6), JSON, max_size=4))
def test_checkpoint_gives_back_exactly_what_was_saved(tmp_path, tensors, meta):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, tensors, meta, keep_previous=False)
    loaded, loaded_meta = checkpoint.load(path)
    assert same(loaded, tensors) and loaded_meta == meta


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_never_misread(tmp_path, data):
    path = tmp_path / "c.safetensors"
    tensors = {"model.w": torch.arange(6.0).reshape(2, 3), "optim.0.step": torch.tensor(4.0),
               "n": torch.tensor([1, 2, 3])}
    meta = {"state": {"epoch": 3, "lr_scale": 0.5}, "optimizer": {"param_groups": [{"lr": 0.001}]}}
    checkpoint.save(path, tensors, meta, keep_previous=False)
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    path.write_bytes(bytes(raw))
    try:
        loaded, loaded_meta = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        assert "\n" not in str(e)
    else:  # only a change that altered nothing that is read (e.g. header padding) may load
        assert same(loaded, tensors) and loaded_meta == meta
