"""Shared pieces of the benchmarks: the variants being timed, interleaved timing, FLOP counting,
the hardware ceiling and peak-memory probes."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from realnvp import RealNVP, VectorRealNVP, precision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

#: where models, batches and timings live; ``run.py --device`` sets it through :func:`set_device`
DEVICE = torch.device("cpu")


def set_device(name: str) -> None:
    """Run everything on ``name`` ("cpu", "cuda", "cuda:1"). On a GPU fp32 means fp32 (TF32 off,
    for us and the peers alike) and cuDNN picks its fastest algorithms for the fixed shapes."""
    global DEVICE
    DEVICE = torch.device(name)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True


def sync() -> None:
    """Wait for queued GPU work, so that a clock read after it measures it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


WORKLOADS = {
    # the paper's CIFAR-10 model (§4.1): 2 scales, 8 residual blocks, 64 feature maps
    "cifar10": dict(kind="image", shape=(3, 32, 32), levels=256, batch=64,
                    model=dict(num_scales=2, hidden_channels=64, num_blocks=8)),
    # MNIST-shaped: the project's mnist recipe (3 scales 28 -> 14 -> 7, 4 blocks, 32 maps)
    "mnist": dict(kind="image", shape=(1, 28, 28), levels=256, batch=64,
                  model=dict(num_scales=3, hidden_channels=32, num_blocks=4)),
    # scikit-learn's 8x8 digits: the project's digits recipe (2 scales, 2 blocks, 32 maps)
    "digits": dict(kind="image", shape=(1, 8, 8), levels=17, batch=64,
                   model=dict(num_scales=2, hidden_channels=32, num_blocks=2)),
    # 2-D toy data: the project's toy recipe (8 couplings, MLP 2x128), batch 256
    "toy-2d": dict(kind="vector", dim=2, batch=256, model=dict(num_couplings=8, hidden=128)),
    # tabular (MINIBOONE-shaped, 43 features): the project's tabular recipe (10 couplings, 2x256)
    "tabular-43d": dict(kind="vector", dim=43, batch=512, model=dict(num_couplings=10, hidden=256)),
}


def make_batch(wl: dict, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if wl["kind"] == "image":
        k = wl["levels"]
        x = torch.randint(0, k, (batch, *wl["shape"]), generator=g).float()
        return ((x + torch.rand(x.shape, generator=g)) / k).to(DEVICE)
    return torch.randn(batch, wl["dim"], generator=g).to(DEVICE)


# ---------------------------------------------------------------------------------------------
# Variants: one model + optimizer + the three things we time
# ---------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    label: str
    model: torch.nn.Module
    train: object  # x -> None (forward + backward + optimizer)
    evaluate: object | None  # x -> log-likelihoods (no grad, eval mode)
    sample: object | None  # n -> samples
    precision: str = "fp32"
    peer: bool = False
    note: str = ""
    flops: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _adam(model):
    # fused: one kernel for all parameters (on the CPU since torch 2.4), for every variant alike;
    # the default per-tensor loop costs ~1.7 ms a step for a 100-tensor model
    return torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def ours(wl: dict, prec: str = "fp32", memory_saving: bool = False, batch_norm: bool = True,
         weight_norm: bool = True) -> Variant:
    torch.manual_seed(0)
    if wl["kind"] == "image":
        model = RealNVP(wl["shape"], **wl["model"], memory_saving=memory_saving)
    else:
        model = VectorRealNVP(wl["dim"], **wl["model"], memory_saving=memory_saving,
                              batch_norm=batch_norm, weight_norm=weight_norm)
    model.to(DEVICE)
    opt = _adam(model)

    def train(x):
        opt.zero_grad(set_to_none=True)
        with precision.autocast(DEVICE, prec):
            loss = -model.log_prob(x).mean()
        loss.backward()
        opt.step()

    def evaluate(x):
        with torch.no_grad(), precision.autocast(DEVICE, prec):
            return model.log_prob(x)

    def sample(n):
        with precision.autocast(DEVICE, prec):
            return model.sample(n)

    name = f"realnvp {prec}" + (" memory-saving" if memory_saving else "")
    label = "this package" + (", memory-saving backprop" if memory_saving else "")
    note = "" if batch_norm else "batch_norm=False: no batch norm between couplings"
    if not weight_norm:
        note += ", weight_norm=False: plain linear layers"
    if note:
        note += " (the architecture of zuko, FrEIA and normflows)"
    return Variant(name, label, model, train, None if memory_saving else evaluate,
                   None if memory_saving else sample, precision=prec, note=note)


def chrischute(wl: dict, prec: str = "fp32") -> Variant:
    torch.manual_seed(0)
    c = wl["shape"][0]
    m = wl["model"]
    model = peers.ChrischuteRealNVP(m["num_scales"], c, m["hidden_channels"], m["num_blocks"],
                                    num_levels=wl["levels"]).to(DEVICE)
    opt = _adam(model)

    def train(x):
        opt.zero_grad(set_to_none=True)
        with precision.autocast(DEVICE, prec):
            loss = model.nll(x).mean()
        loss.backward()
        opt.step()

    def evaluate(x):
        with torch.no_grad(), precision.autocast(DEVICE, prec):
            return -model.nll(x)

    def sample(n):
        with precision.autocast(DEVICE, prec):
            return model.sample(n, wl["shape"])

    return Variant(f"chrischute {prec}", "chrischute/real-nvp structure, re-implemented in "
                   "benchmarks/peers.py (not a PyPI package)", model, train, evaluate, sample,
                   precision=prec, peer=True, note="no batch-norm bijector between couplings")


def _freia_log_prob(inn, x):
    z, log_jac = inn(x)
    return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_jac


def vector_peer(wl: dict, lib: str) -> Variant:
    torch.manual_seed(0)
    d, m = wl["dim"], wl["model"]
    builder = {"nflows": peers.nflows_realnvp, "zuko": peers.zuko_realnvp,
               "FrEIA": peers.freia_realnvp, "normflows": peers.normflows_realnvp}[lib]
    model = builder(d, m["num_couplings"], m["hidden"]).to(DEVICE)
    if lib == "zuko":
        log_prob = lambda x: model().log_prob(x)
        draw = lambda n: model().sample((n,))
        note = "no batch norm between couplings; soft-clipped affine scale"
    elif lib == "FrEIA":
        log_prob = lambda x: _freia_log_prob(model, x)
        draw = lambda n: model(torch.randn(n, d, device=DEVICE), rev=True)[0]
        note = "GLOWCouplingBlock (2 couplings each); no batch norm"
    elif lib == "normflows":
        log_prob = model.log_prob
        draw = lambda n: model.sample(n)[0]
        note = "AffineCouplingBlock + swap; no batch norm"
    else:
        log_prob = model.log_prob
        draw = lambda n: model.sample(n)
        note = "AffineCouplingTransform + BatchNorm, as ours"
    opt = _adam(model)

    def train(x):
        opt.zero_grad(set_to_none=True)
        (-log_prob(x).mean()).backward()
        opt.step()

    def evaluate(x):
        with torch.no_grad():
            return log_prob(x)

    def sample(n):
        with torch.no_grad():
            return draw(n)

    return Variant(lib, f"{lib} (PyPI)", model, train, evaluate, sample, peer=True, note=note)


def build(wl_name: str, variant: str) -> Variant:
    """``variant``: realnvp-fp32, realnvp-bf16, realnvp-fp32-memsave, realnvp-bf16-memsave,
    realnvp-fp32-nobn (vector flows without batch norm), realnvp-fp32-plain (without batch norm
    and without weight norm: the peers' architecture),
    chrischute-fp32, chrischute-bf16, nflows, zuko, FrEIA, normflows."""
    wl = WORKLOADS[wl_name]
    parts = variant.split("-")
    if parts[0] == "realnvp":
        plain = "plain" in parts[2:]
        return ours(wl, parts[1], memory_saving="memsave" in parts[2:],
                    batch_norm=not (plain or "nobn" in parts[2:]), weight_norm=not plain)
    if parts[0] == "chrischute":
        return chrischute(wl, parts[1])
    return vector_peer(wl, variant)


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


class _FlopCount(TorchDispatchMode):
    """The FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts (matmuls, convolutions,
    attention: its registry), without its module tracker, whose backward hooks do not allow the
    ``torch.autograd.grad`` calls that memory-saving backprop makes inside the backward pass."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


def count_flops(fn, *args) -> int:
    """Matmul/convolution FLOPs of ``fn(*args)``, forward and backward, as FlopCounterMode counts."""
    with _FlopCount() as counter:
        fn(*args)
    return counter.total


def _calls_per_sample(fn, arg, target_s: float) -> int:
    sync()
    t = time.perf_counter()
    fn(arg)
    sync()
    dt = time.perf_counter() - t
    return max(1, int(target_s / max(dt, 1e-6)))


def interleaved(fns: dict, arg, rounds: int, target_s: float = 0.3) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in ``rounds`` rounds; every round runs every
    function once (several calls when one is short), in an order that rotates between rounds, so
    that slow phases of a shared machine hit all of them alike. One warm-up call each first."""
    reps = {k: _calls_per_sample(f, arg, target_s) for k, f in fns.items()}
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            sync()
            t = time.perf_counter()
            for _ in range(reps[k]):
                fns[k](arg)
            sync()
            times[k].append((time.perf_counter() - t) / reps[k])
    return times


def paired_ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time(b) / time(a): how many times faster ``a`` is than ``b``."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b], strict=True))


def conv_ceiling(prec: str, rounds: int = 5, batch: int = 32, channels: int = 128, size: int = 32
                 ) -> dict:
    """Achieved FLOP/s of a large 3x3 conv2d forward + backward (input and weight gradients), in
    both memory layouts; the ceiling is the better of the two."""
    torch.manual_seed(0)
    out = {}
    fns = {}
    for layout in ("nchw", "channels_last"):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(DEVICE)
        x = torch.randn(batch, channels, size, size, device=DEVICE)
        if layout == "channels_last":
            conv = conv.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)

        def step(_, conv=conv, x=x):
            with precision.autocast(DEVICE, prec):
                y = conv(x)
            y.backward(torch.ones_like(y))

        fns[layout] = step
    flops = count_flops(fns["nchw"], None)
    times = interleaved(fns, None, rounds, target_s=0.2)
    for layout, ts in times.items():
        # the best round: what the machine can do (a busy neighbour only ever lowers it); the
        # models are timed by their median, so "of ceiling" errs on the low side
        out[layout] = flops / min(ts)
    out["ceiling"] = max(out["nchw"], out["channels_last"])
    out["shape"] = f"conv2d {channels}->{channels} 3x3, batch {batch}, {size}x{size}, fwd+bwd"
    return out


def peak_memory_probe(wl_name: str, variant: str, batch: int) -> dict:
    """Peak resident memory of one training step, in a fresh process (so nothing from other
    variants is cached in the allocator), with glibc told to return large blocks to the system
    at once (``MALLOC_MMAP_THRESHOLD_``), so the peak RSS above the pre-step baseline is what the
    step itself needed. The optimizer state and gradients are allocated first by a batch-2 step."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--memory-probe", wl_name, variant,
           str(batch), "--threads", str(torch.get_num_threads()), "--device", str(DEVICE)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_probe_main(wl_name: str, variant: str, batch: int) -> None:
    wl = WORKLOADS[wl_name]
    v = build(wl_name, variant)
    v.model.train()
    v.train(make_batch(wl, 2 if wl["kind"] == "image" else 16, seed=1))
    x = make_batch(wl, batch)
    import gc

    gc.collect()
    if DEVICE.type == "cuda":  # the allocator's own count: what the step allocated above the model
        sync()
        base = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        v.train(x)
        sync()
        peak = torch.cuda.max_memory_allocated(DEVICE)
        print(json.dumps({"peak_mb": (peak - base) / 2**20, "method": "cuda max_memory_allocated"}))
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (Linux >= 4.0)
        base = _status_kb("VmRSS")
        v.train(x)
        peak = _status_kb("VmHWM")
        print(json.dumps({"peak_mb": (peak - base) / 1024, "method": "VmHWM-VmRSS"}))
    except OSError as e:
        print(json.dumps({"error": f"cannot measure RSS: {e}"}))


def environment() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None
    return dict(torch=torch.__version__, python=platform.python_version(), cpu=cpu,
                cores=os.cpu_count(), threads=torch.get_num_threads(), isa=isa, device=str(DEVICE),
                gpu=gpu, bf16_native=precision.bf16_supported(DEVICE), load=os.getloadavg())
