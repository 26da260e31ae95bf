"""Speed and memory modes: memory-saving backprop through the exact inverse, and bf16 autocast.

No wall-clock assertions: memory is measured by a deterministic proxy (the bytes autograd keeps
for the backward pass, through ``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import perturb
from realnvp import Glow, RealNVP, VectorRealNVP, precision
from realnvp.bijectors import (
    ActNorm,
    AffineCoupling,
    BatchNorm,
    Checkerboard,
    Halves,
    Invertible1x1Conv,
    Logit,
    MultiScale,
    Sequential,
    Squeeze,
)
from realnvp.bijectors.invertible_backprop import (
    frozen_statistics,
    invertible_forward,
    statistics_modules,
    supports,
)
from realnvp.nets import ResNet

MODELS = {
    "image-3x8x8": lambda: RealNVP((3, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1),
    "image-1x8x8-3scales-additive": lambda: RealNVP(
        (1, 8, 8), num_scales=3, hidden_channels=4, num_blocks=1, coupling="additive"),
    "image-no-bn": lambda: RealNVP((2, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1,
                                   batch_norm=False),
    "vector-6": lambda: VectorRealNVP(6, num_couplings=4, hidden=16),
    "vector-5-additive": lambda: VectorRealNVP(5, num_couplings=3, hidden=8, coupling="additive"),
    "vector-5-plain": lambda: VectorRealNVP(5, num_couplings=3, hidden=8, batch_norm=False,
                                            weight_norm=False),
}


def _data(model, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *model.event_shape)
    if model.support:
        return (0.01 + 0.98 * torch.rand(shape, generator=g)).to(dtype)
    return torch.randn(shape, generator=g).to(dtype)


def _pair(name, dtype=torch.float64):
    torch.manual_seed(0)
    plain = perturb(MODELS[name](), 0.1).to(dtype)
    saving = copy.deepcopy(plain).memory_saving_(True)
    assert saving.memory_saving and not plain.memory_saving
    return plain, saving


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_memory_saving_gradients_equal_plain_autograd(name):
    """Float64: every parameter's gradient, the input's gradient, the log-likelihood and the
    batch-norm running statistics after the step are those of plain autograd."""
    plain, saving = _pair(name)
    plain.train(), saving.train()
    x = _data(plain, 8, torch.float64)
    results = []
    for model in (plain, saving):
        xi = x.clone().requires_grad_(True)
        log_p = model.log_prob(xi)
        # a loss that weights examples differently, so per-example log-dets matter
        (-(log_p * torch.linspace(0.5, 1.5, len(x), dtype=x.dtype)).mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((log_p.detach(), xi.grad.clone(), grads, _state(model)))
    (lp_a, gx_a, g_a, s_a), (lp_b, gx_b, g_b, s_b) = results
    torch.testing.assert_close(lp_b, lp_a, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-7, atol=1e-9)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-7, atol=1e-9, msg=n)
    for k in s_a:  # running statistics updated exactly once, to the same values
        torch.testing.assert_close(s_b[k], s_a[k], rtol=0, atol=1e-12, msg=k)


@pytest.mark.parametrize("name", ["image-3x8x8", "vector-6"])
def test_memory_saving_float32_training_matches(name):
    """A few SGD steps in float32 with each mode end at the same parameters (SGD, not Adam: Adam
    turns the round-off in a gradient that is zero in exact arithmetic into a full-size step)."""
    plain, saving = _pair(name, torch.float32)
    x = _data(plain, 32, torch.float32)
    for model in (plain, saving):
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            (-model.log_prob(x).mean()).backward()
            opt.step()
    for (n, a), b in zip(plain.state_dict().items(), saving.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)


def test_memory_saving_eval_mode_and_no_grad_are_unchanged():
    plain, saving = _pair("image-3x8x8")
    x = _data(plain, 8, torch.float64)
    plain.eval(), saving.eval()
    xi, xj = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.autograd.grad(plain.log_prob(xi).sum(), xi)
    (g_x,) = torch.autograd.grad(saving.log_prob(xj).sum(), xj)
    (g_ref,) = torch.autograd.grad(plain.log_prob(xi).sum(), xi)
    torch.testing.assert_close(g_x, g_ref, rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(saving.log_prob(x), plain.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(saving.sample(3, generator=torch.Generator().manual_seed(0)),
                               plain.sample(3, generator=torch.Generator().manual_seed(0)))


def test_memory_saving_two_forwards_before_one_backward():
    """Gradient accumulation over two batches before a single backward: each chain inverts with
    the batch statistics of its own forward pass, not the last batch's."""
    plain, saving = _pair("image-3x8x8")
    x1, x2 = _data(plain, 8, torch.float64, seed=1), _data(plain, 8, torch.float64, seed=2)
    grads = []
    for model in (plain, saving):
        loss = -(model.log_prob(x1).mean() + 2 * model.log_prob(x2).mean())
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_frozen_statistics_normalise_as_usual_and_record_nothing():
    """The recomputation's switch: same outputs as an ordinary training-mode call, no running
    statistic, counter or last-batch statistic changed, every flag back afterwards (also after
    an error); norms without a switch (instance norm with running statistics) are restored."""
    from realnvp.nets.norm import BatchNorm2d

    net = nn.Sequential(BatchNorm2d(3), nn.InstanceNorm2d(3, track_running_stats=True))
    bij = BatchNorm(3)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    with torch.no_grad():
        net(x), bij(x)  # some history to keep
    expected = net(x), bij(x)[0]
    before = {k: v.clone() for k, v in [*net.state_dict().items(), *bij.state_dict().items()]}
    last = bij._last_stats
    modules = statistics_modules(net) + statistics_modules(bij)
    assert len(modules) == 3
    with frozen_statistics(modules):
        got = net(x), bij(x)[0]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    after = {k: v for k, v in [*net.state_dict().items(), *bij.state_dict().items()]}
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert bij._last_stats is last
    assert net[0].track_running_stats and bij.updates_statistics
    with pytest.raises(RuntimeError), frozen_statistics(modules):
        raise RuntimeError("boom")
    assert net[0].track_running_stats and bij.updates_statistics


def test_memory_saving_can_be_switched_off_and_rejects_unknown_layers():
    model = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1, memory_saving=True)
    assert model.memory_saving
    assert not model.memory_saving_(False).memory_saving
    assert supports([Logit(), BatchNorm(2), Squeeze(), ActNorm(2), Invertible1x1Conv(2)])
    stage = Sequential(Squeeze())
    assert not supports([MultiScale([stage], (1, 4, 4))])
    with pytest.raises(TypeError, match="MultiScale"):
        invertible_forward([MultiScale([stage], (1, 4, 4))], torch.rand(2, 1, 4, 4))


def test_generic_layers_in_a_memory_saving_chain():
    """ActNorm, the 1x1 convolution and the logit are recomputed through their inverses too."""
    torch.manual_seed(0)
    c = 4
    layers = [Logit(), ActNorm(c), Invertible1x1Conv(c),
              AffineCoupling(Checkerboard(c, 4, 4, 0), ResNet(c, 2 * c, hidden=4, num_blocks=1)),
              BatchNorm(c), Squeeze(),
              AffineCoupling(Halves(4 * c), ResNet(2 * c, 4 * c, hidden=4, num_blocks=1)), BatchNorm(4 * c)]
    plain = perturb(Sequential(*layers), 0.1).double()
    x = 0.05 + 0.9 * torch.rand(8, c, 4, 4, dtype=torch.float64)
    plain(x)  # ActNorm's data-dependent initialisation
    saving = copy.deepcopy(plain)
    saving.memory_saving = True
    outs = []
    for model in (plain, saving):
        xi = x.clone().requires_grad_(True)
        y, log_det = model(xi)
        ((y ** 2).sum() - log_det.sum()).backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in model.parameters()], _state(model)))
    (y_a, gx_a, g_a, s_a), (y_b, gx_b, g_b, s_b) = outs
    torch.testing.assert_close(y_b, y_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-7, atol=1e-9)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    for k in s_a:
        torch.testing.assert_close(s_b[k], s_a[k], rtol=0, atol=1e-12, msg=k)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", ["affine-checkerboard", "affine-halves", "additive-halves"])
def test_fused_coupling_step_inverts_with_the_couplings_own_formula(kind, mode):
    """The coupling's memory-saving step reconstructs its input through the coupling's inverse
    formula (one copy of it, in coupling.py): bit for bit what ``invert`` gives; its gradients are
    plain autograd's through the layer."""
    from realnvp.bijectors import AdditiveCoupling

    torch.manual_seed(0)
    cls = AdditiveCoupling if kind.startswith("additive") else AffineCoupling
    mask = Checkerboard(2, 4, 4, 1) if kind.endswith("checkerboard") else Halves(2, flip=True)
    out = mask.out_features * (2 if cls is AffineCoupling else 1)
    layer = perturb(cls(mask, ResNet(mask.in_features, out, hidden=4, num_blocks=1)), 0.2).double()
    layer.train(mode == "train")
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    xi = x.clone().requires_grad_(True)
    y, log_det = layer(xi)
    g_y, g_ld = torch.randn_like(y), torch.randn_like(log_det)
    params = [p for p in layer.parameters() if p.requires_grad]
    ref = torch.autograd.grad([y, log_det] if log_det.requires_grad else [y], [xi] + params,
                              [g_y, g_ld] if log_det.requires_grad else [g_y], allow_unused=True)
    stats = statistics_modules(layer)
    # with autograd on, as the step runs the network: without it an evaluation-mode network folds
    # its batch norms into the convolutions, the same function to round-off only
    with torch.enable_grad(), frozen_statistics(stats):
        expected = layer.invert(y.detach()).detach()
    x_re, g_x, g_params = layer.recompute_backward(
        y.detach(), g_y, g_ld, params=params, freeze=lambda: frozen_statistics(stats), state=None,
        need_x_grad=True)
    assert torch.equal(x_re, expected)
    torch.testing.assert_close(x_re, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_x, ref[0], rtol=1e-7, atol=1e-10)
    for a, b in zip(ref[1:], g_params, strict=True):
        if a is None:
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-10)


class SavedBytes:
    """Peak bytes of tensors that autograd holds for the backward pass, over a forward and a
    backward pass (storages counted once however many graph nodes save them). A deterministic
    stand-in for activation memory."""

    def __init__(self):
        self.live: dict[int, list] = {}
        self.current = self.peak = 0

    def _pack(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [0, storage.nbytes()]
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Handle(self, key, t)

    def _release(self, key):
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)


class _Handle:
    def __init__(self, owner, key, tensor):
        self.owner, self.key, self.tensor = owner, key, tensor

    def __del__(self):
        self.owner._release(self.key)


def _saved_peak(model, x):
    counter = SavedBytes()
    with counter.hooks():
        model.zero_grad()
        (-model.log_prob(x).mean()).backward()
    return counter.peak


def test_memory_saving_keeps_far_fewer_activations():
    """A paper-shaped model (2 scales, checkerboard and channel-wise couplings, batch norms):
    the peak of what autograd holds drops below half of plain autograd's, by the saved-tensor
    proxy (the backward pass's own recomputation included)."""
    torch.manual_seed(0)
    plain = RealNVP((3, 16, 16), num_scales=2, hidden_channels=8, num_blocks=2)
    saving = copy.deepcopy(plain).memory_saving_(True)
    x = _data(plain, 8, torch.float32)
    peak_plain, peak_saving = _saved_peak(plain, x), _saved_peak(saving, x)
    assert peak_saving < 0.5 * peak_plain, (peak_saving, peak_plain)


# --- bf16 ------------------------------------------------------------------------------------


def test_precision_autocast_contexts():
    assert precision.PRECISIONS == ("fp32", "bf16")
    with precision.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        precision.autocast("cpu", "fp8")
    assert isinstance(precision.bf16_supported("cpu"), bool)


@pytest.mark.parametrize("name", ["image-3x8x8", "vector-6"])
def test_bf16_keeps_flow_arithmetic_in_float32(name):
    """Under bf16 autocast the s/t networks run in bf16, but the latent, the log-dets and
    log-likelihood are float32 and close to the float32 model's; training steps run and give
    finite float32 gradients."""
    torch.manual_seed(0)
    model = perturb(MODELS[name](), 0.05)
    x = _data(model, 16, torch.float32)
    net_dtypes = []
    nets = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    hooks = [c.net.register_forward_hook(lambda m, i, o: net_dtypes.append(o.dtype)) for c in nets]
    model.eval()
    with torch.no_grad():
        ref = model.log_prob(x)
        with precision.autocast("cpu", "bf16"):
            z, log_det = model.forward_with_log_det(x)
            log_p = model.log_prob(x)
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in net_dtypes, "the s/t networks did not run in bf16"
    assert z.dtype == torch.float32 and log_det.dtype == torch.float32 and log_p.dtype == torch.float32
    # bf16 has 8 bits of mantissa: per-dimension log-likelihoods agree to ~1e-2 nats
    assert ((log_p - ref).abs() / model.num_dims).max() < 2e-2
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        with precision.autocast("cpu", "bf16"):
            loss = -model.log_prob(x).mean()
        assert loss.dtype == torch.float32
        loss.backward()
        for n, p in model.named_parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32, n
            assert torch.isfinite(p.grad).all(), n
        opt.step()
    with precision.autocast("cpu", "bf16"):
        s = model.sample(4)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()


def test_bf16_with_memory_saving():
    """The backward pass of memory-saving mode re-enters the forward pass's autocast state, so
    its gradients are those of plain bf16 autograd (to bf16 round-off)."""
    torch.manual_seed(0)
    plain = perturb(MODELS["image-3x8x8"](), 0.05)
    saving = copy.deepcopy(plain).memory_saving_(True)
    x = _data(plain, 16, torch.float32)
    grads = []
    for model in (plain, saving):
        with precision.autocast("cpu", "bf16"):
            loss = -model.log_prob(x).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    rel = (grads[1] - grads[0]).norm() / grads[0].norm()
    assert rel < 0.05, rel


def test_channels_last_convolutions_are_transparent():
    """On the CPU the s/t ResNets run their convolutions channels-last; results equal the
    default layout's, and the parameters keep the default layout."""
    from realnvp.nets import WNConv2d

    torch.manual_seed(0)
    model = perturb(MODELS["image-3x8x8"](), 0.05).double().eval()
    x = _data(model, 4, torch.float64)
    conv = next(m for m in model.modules() if isinstance(m, WNConv2d) and m.kernel_size == (3, 3))
    assert WNConv2d.channels_last is None
    assert conv.normalized_weight().is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = model.log_prob(x)
        WNConv2d.channels_last = False
        try:
            assert conv.normalized_weight().is_contiguous()
            b = model.log_prob(x)
        finally:
            WNConv2d.channels_last = None
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert all(p.is_contiguous() for p in model.parameters())
    assert isinstance(model.bijector, nn.Module)


def test_channels_last_by_device():
    """By default channels-last on the CPU only; a bool setting forces either layout anywhere."""
    from realnvp.nets.weightnorm import channels_last_on

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert channels_last_on(cpu) and not channels_last_on(gpu)
    assert channels_last_on(gpu, True) and not channels_last_on(cpu, False)


def test_weight_norm_cache_follows_parameter_updates():
    """Evaluation reuses the normalised weights until a parameter changes; an optimizer step or
    ``load_state_dict`` invalidates them, and a weight cached in inference mode never reaches a
    graph that needs gradients."""
    torch.manual_seed(0)
    model = perturb(MODELS["image-3x8x8"](), 0.05).eval()
    x = _data(model, 4, torch.float32)
    with torch.no_grad():
        before = model.log_prob(x)
        for p in model.parameters():
            p.add_(0.01)
        after = model.log_prob(x)
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        m.__dict__.pop("_wn_cache", None)
    with torch.no_grad():
        torch.testing.assert_close(after, fresh.log_prob(x), rtol=0, atol=0)
    assert not torch.allclose(before, after)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        model.log_prob(x)
    xi = x.clone().requires_grad_(True)
    model.log_prob(xi).sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_batch_norm_in_evaluation_matches_the_unfolded_network(dtype):
    """In evaluation without autograd each residual block folds its second batch norm into the
    convolution before it; the result equals the unfolded network's (the path taken whenever
    gradients are recorded) to round-off, and follows parameter and running-average updates."""
    torch.manual_seed(0)
    model = perturb(MODELS["image-3x8x8"](), 0.3).to(dtype).eval()
    for m in model.modules():  # non-trivial running averages
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = _data(model, 4, dtype)
    tol = dict(rtol=0, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for _ in range(2):
        with torch.no_grad():
            folded = model.log_prob(x)
        assert any("_fold_cache" in m.__dict__ for m in model.modules())
        with torch.enable_grad():
            unfolded = model.log_prob(x).detach()
        torch.testing.assert_close(folded, unfolded, **tol)
        with torch.no_grad():  # the cache must notice this
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.mul_(1.5)
                    m.bias.add_(0.1)
    with torch.no_grad():  # and bf16 autocast keeps its folded weights in bf16, close to fp32
        ref = model.float().log_prob(x.float())
        with precision.autocast("cpu", "bf16"):
            low = model.log_prob(x.float())
    assert (low - ref).abs().max() / ref.abs().max() < 0.02


@pytest.mark.parametrize("optimizer", ["adam-fused", "sgd-fused", "adam"])
def test_cached_eval_weights_follow_fused_optimizer_steps(optimizer):
    """Fused optimizers update parameters without bumping their version counters, and batch norm
    updates its running averages inside its kernel; evaluation after a training step must still
    see the new weights and statistics (the caches are dropped by every training forward pass)."""
    torch.manual_seed(0)
    model = perturb(MODELS["image-3x8x8"](), 0.05)
    x = _data(model, 8, torch.float32)
    opt = {"adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
           "sgd-fused": lambda p: torch.optim.SGD(p, lr=1e-2, fused=True),
           "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}[optimizer](model.parameters())
    for _ in range(3):
        model.eval()
        with torch.no_grad():
            cached_result = model.log_prob(x)
        fresh = copy.deepcopy(model)
        for m in fresh.modules():
            m.__dict__.pop("_wn_cache", None)
            m.__dict__.pop("_fold_cache", None)
        with torch.no_grad():
            torch.testing.assert_close(cached_result, fresh.log_prob(x), rtol=1e-6, atol=1e-5)
        model.train()
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()
        opt.step()


@pytest.mark.parametrize("name", ["vector-6", "image-3x8x8"])
def test_torch_compile_computes_what_eager_mode_computes(name):
    """``torch.compile`` of a model's bijector gives eager mode's log-likelihoods and gradients.
    ``aot_eager`` traces through the same decompositions as the default backend without needing
    a C++ compiler; with the weight-norm magnitudes passed 1-D, the traced ``_weight_norm``
    broadcast them against the input dimension (a wrong shape, or wrong values for a square
    weight), which is what this test caught."""
    eager, _ = _pair(name)
    compiled = copy.deepcopy(eager)
    compiled.bijector = torch.compile(compiled.bijector, backend="aot_eager", fullgraph=True)
    x = _data(eager, 8, torch.float64)
    try:
        out = []
        for model in (eager, compiled):
            model.train()
            log_p = model.log_prob(x)
            grads = torch.autograd.grad(log_p.sum(), list(model.parameters()))
            out.append((log_p, *grads))
        for a, b in zip(*out, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_memory_saving_replays_the_dropout_masks(name):
    """With dropout in the s/t networks the recomputation draws the forward pass's masks again:
    gradients equal plain autograd's under the same seed, and the generator ends where plain
    autograd leaves it."""
    torch.manual_seed(0)
    if name == "glow":
        plain = Glow((1, 8, 8), num_levels=2, steps_per_level=2, hidden_channels=4, dropout=0.3)
    else:
        plain = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=2, dropout=0.3)
    plain = perturb(plain, 0.1).double().train()
    if name == "glow":
        plain.initialize_(_data(plain, 8, torch.float64, seed=4))
    saving = copy.deepcopy(plain).memory_saving_(True)
    x = _data(plain, 8, torch.float64)
    results = []
    for model in (plain, saving):
        torch.manual_seed(3)
        loss = -model.log_prob(x).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                        torch.get_rng_state()))
    (loss_a, g_a, rng_a), (loss_b, g_b, rng_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    assert torch.equal(rng_a, rng_b)
