"""MAF and autoregressive neural spline flows against zuko's (and nflows', when it imports), at
equal architecture.

    python benchmarks/autoregressive_peers.py                       # 30 s per quality run
    python benchmarks/autoregressive_peers.py --seconds 20 --rounds 5
    python benchmarks/autoregressive_peers.py --skip-quality        # speed tables only
    python benchmarks/autoregressive_peers.py --skip-speed --toys checkerboard --seeds 5

Architectures (the same on every side): 5 autoregressive layers, MADEs with 2 hidden layers
(width 64 on D = 2, 128 on D = 43; ReLU), the variable order reversed between layers, no batch
norm, no residual blocks.

- MAF: ``realnvp.MAF(D, 5, hidden, 2)`` (affine, ``permutation='reverse'``) against
  ``zuko.flows.MAF(D, transforms=5, hidden_features=(h, h))`` (which flips the order between
  layers) and nflows' ``MaskedAffineAutoregressiveTransform(D, h, num_blocks=1,
  use_residual_blocks=False)`` (initial layer + 1 block = 2 hidden layers) with a
  ``ReversePermutation`` between layers. Ours has D more parameters a layer (a per-feature
  ``rescale`` of the tanh-bounded log-scale); the MADEs are the same size.
- NSF: ``realnvp.NSFAutoregressive(D, 5, hidden, 2, bins=8)`` (rational-quadratic splines on
  [-5, 5], identity outside) against ``zuko.flows.NSF(D, bins=8, transforms=5, ...)`` (bound 5
  too) and nflows' ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform(num_bins=8,
  tails='linear', tail_bound=5)``: 3·bins − 1 outputs per feature on every side, so the
  parameter counts are equal.

Speed (table 1): one training step (``-log_prob(x).mean()`` forward, backward, fused Adam step:
``common._adam``, as the other peer benchmarks), ``log_prob`` in eval mode without grad, and
``sample(n)`` with ``n`` the batch size; D = 2 on toy moons (batch 256) and D = 43 on standard
normal "tabular-like" data (batch 512). Timed by :func:`common.interleaved` (every round runs
every side once, in an order that rotates between rounds; medians over rounds) and the ratios are
:func:`common.paired_ratio`: the median over rounds of **peer time ÷ our time** (> 1: ours is
faster). Sampling of an autoregressive flow takes D sequential MADE passes per layer; the
"per dim" column is ``time(sample(n)) / D``.

Quality (table 2): each flow (ours and the peers', same architecture, D = 2, width 64) is trained
for ``--seconds`` of wall-clock on one thread with Adam 3e-3, cosine-decayed over the budget by
elapsed time, batch 256 (shuffled epochs of the 20000 training points
``sample_toy(name, 20000, 0, 'train')``), then evaluated in eval mode on
``sample_toy(name, 5000, 0, 'test')``: test NLL ± its standard error, the gap to the generator's
entropy (:data:`realnvp.data.toy.ENTROPY_NATS`) and the steps done. The training loop is a short
one shared by every side, not the package's trainer (this is a peer comparison: no validation,
checkpoint selection or gradient clipping for anyone). The sides alternate within each run, the
first side rotating between runs. ``--seeds N`` repeats every toy and flow (``--flows``) with
seeds 0..N−1 (initialisation and batch order) and adds a table of each peer's NLL minus ours,
paired by seed (mean ± standard error over seeds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import math
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import Variant, _adam, interleaved, make_batch, paired_ratio  # noqa: E402
from realnvp.data.toy import ENTROPY_NATS, sample_toy  # noqa: E402
from realnvp.models.autoregressive import MAF, NSFAutoregressive  # noqa: E402

LAYERS, BINS, BOUND = 5, 8, 5.0
SPEED_CASES = [  # (D, batch, hidden)
    (2, 256, 64),
    (43, 512, 128),
]


def have(lib: str) -> bool:
    try:
        __import__(lib)
        return True
    except Exception:  # nflows can fail to import on a new torch
        return False


# ---------------------------------------------------------------------------------- the models


def build_model(side: str, flow: str, dim: int, hidden: int, seed: int = 0):
    """``(module, log_prob, draw)`` for ``side`` in ours / zuko / nflows, ``flow`` in maf / nsf,
    initialised from ``seed``."""
    torch.manual_seed(seed)
    if side == "ours":
        if flow == "maf":
            m = MAF(dim, LAYERS, hidden, 2, transformer="affine", permutation="reverse")
        else:
            m = NSFAutoregressive(dim, LAYERS, hidden, 2, bins=BINS, bound=BOUND, permutation="reverse")
        return m, m.log_prob, m.sample
    if side == "zuko":
        import zuko

        if flow == "maf":
            m = zuko.flows.MAF(dim, transforms=LAYERS, hidden_features=(hidden, hidden))
        else:
            m = zuko.flows.NSF(dim, bins=BINS, transforms=LAYERS, hidden_features=(hidden, hidden))
        return m, lambda x: m().log_prob(x), lambda n: m().sample((n,))
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms import CompositeTransform, ReversePermutation
    from nflows.transforms.autoregressive import (
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    )

    layers = []
    for i in range(LAYERS):
        if i:
            layers.append(ReversePermutation(dim))
        if flow == "maf":
            layers.append(MaskedAffineAutoregressiveTransform(
                dim, hidden, num_blocks=1, use_residual_blocks=False, use_batch_norm=False))
        else:
            layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                dim, hidden, num_bins=BINS, tails="linear", tail_bound=BOUND, num_blocks=1,
                use_residual_blocks=False, use_batch_norm=False))
    m = Flow(CompositeTransform(layers), StandardNormal((dim,)))
    return m, m.log_prob, m.sample


def variant(side: str, flow: str, dim: int, hidden: int) -> Variant:
    model, log_prob, draw = build_model(side, flow, dim, hidden)
    opt = _adam(model)

    def train(x):
        model.train()
        opt.zero_grad(set_to_none=True)
        (-log_prob(x).mean()).backward()
        opt.step()

    def evaluate(x):
        model.eval()
        with torch.no_grad():
            return log_prob(x)

    def sample(n):
        model.eval()
        with torch.no_grad():
            return draw(n)

    return Variant(side, side, model, train, evaluate, sample, peer=side != "ours")


# ---------------------------------------------------------------------------------- speed


def speed(sides: list[str], rounds: int, target_s: float) -> None:
    peers_ = [s for s in sides if s != "ours"]
    print("\n### Speed: peer time ÷ our time (> 1: ours is faster), medians over "
          f"{rounds} interleaved rounds\n")
    head = "| flow | D | batch | width | params ours / " + " / ".join(peers_) + " | op | ours ms | "
    head += " | ".join(f"{p} ms | {p} ÷ ours" for p in peers_) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    per_dim = []
    for dim, batch, hidden in SPEED_CASES:
        if dim == 2:
            x = torch.as_tensor(sample_toy("moons", batch, 0, "train"), dtype=torch.float32)
        else:
            x = make_batch(dict(kind="vector", dim=dim), batch)
        for flow in ("maf", "nsf"):
            vs = {s: variant(s, flow, dim, hidden) for s in sides}
            params = " / ".join(f"{vs[s].params:,}" for s in sides)
            for op in ("train", "evaluate", "sample"):
                fns = {s: getattr(v, op) for s, v in vs.items()}
                arg = batch if op == "sample" else x
                times = interleaved(fns, arg, rounds, target_s=target_s)
                med = {s: statistics.median(t) * 1e3 for s, t in times.items()}
                name = {"train": "train step", "evaluate": "log_prob", "sample": f"sample({batch})"}[op]
                row = f"| {flow.upper()} | {dim} | {batch} | 2×{hidden} | {params} | {name} | "
                row += f"{med['ours']:.2f} | "
                row += " | ".join(f"{med[p]:.2f} | {paired_ratio(times, 'ours', p):.2f}" for p in peers_)
                print(row + " |", flush=True)
                if op == "sample":
                    per_dim.append((flow, dim, batch, {s: med[s] / dim for s in sides}))
    print(f"\n### Sampling cost per dimension: time of sample(n) / D (ms), {LAYERS} layers, "
          "D sequential passes each\n")
    print("| flow | D | n | " + " | ".join(f"{s} ms/dim" for s in sides) + " |")
    print("|" + "---|" * (3 + len(sides)))
    for flow, dim, n, d in per_dim:
        print(f"| {flow.upper()} | {dim} | {n} | " + " | ".join(f"{d[s]:.3f}" for s in sides) + " |")


# ---------------------------------------------------------------------------------- quality


def train_for(side: str, flow: str, x_train: torch.Tensor, seconds: float, seed: int = 0):
    """The shared minimal loop: shuffled epochs of batch 256, Adam 3e-3 cosine-decayed by elapsed
    wall-clock over ``seconds``; ``seed`` sets the initialisation and the batch order. Returns
    the model, its ``log_prob`` and the steps done."""
    model, log_prob, _ = build_model(side, flow, x_train.shape[1], 64, seed)
    lr0, bs = 3e-3, 256
    opt = torch.optim.Adam(model.parameters(), lr=lr0, fused=True)
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps, t0 = 0, time.perf_counter()
    while True:
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm) - bs + 1, bs):
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return model, log_prob, steps
            for group in opt.param_groups:
                group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
            opt.zero_grad(set_to_none=True)
            (-log_prob(x_train[perm[i:i + bs]]).mean()).backward()
            opt.step()
            steps += 1


def quality(sides: list[str], toys: list[str], seconds: float, flows: list[str], seeds: list[int]) -> None:
    torch.set_num_threads(1)
    print(f"\n### Quality at equal wall-clock: {seconds:g} s of training each, one thread, D = 2, "
          f"{LAYERS} layers of 2×64\n")
    print("| toy | entropy | flow | seed | side | params | steps | test NLL ± SE | gap |")
    print("|---|---|---|---|---|---|---|---|---|")
    nlls: dict[tuple[str, str, str], list[float]] = {}
    for k, (toy, flow, seed) in enumerate(itertools.product(toys, flows, seeds)):
        xtr = torch.as_tensor(sample_toy(toy, 20000, 0, "train"), dtype=torch.float32)
        xte = torch.as_tensor(sample_toy(toy, 5000, 0, "test"), dtype=torch.float32)
        h = ENTROPY_NATS[toy]
        rows = {}
        for side in sides[k % len(sides):] + sides[: k % len(sides)]:  # the sides' order rotates
            model, log_prob, steps = train_for(side, flow, xtr, seconds, seed)
            model.eval()
            with torch.no_grad():
                lp = log_prob(xte).double()
            ok = torch.isfinite(lp)
            nll = -lp[ok].mean().item()
            se = lp[ok].std().item() / math.sqrt(int(ok.sum()))
            bad = "" if ok.all() else f" ({int((~ok).sum())} non-finite dropped)"
            n_par = sum(p.numel() for p in model.parameters())
            nlls.setdefault((toy, flow, side), []).append(nll)
            rows[side] = (f"| {toy} | {h:.3f} | {flow.upper()} | {seed} | {side} | {n_par:,} | {steps} | "
                          f"{nll:.3f} ± {se:.3f}{bad} | {nll - h:+.3f} |")
        for side in sides:
            print(rows[side], flush=True)
    if len(seeds) > 1:
        print(f"\n### Over {len(seeds)} seeds: mean test NLL, and the peer's minus ours paired by seed "
              "(> 0: ours is better), mean ± standard error over seeds\n")
        print("| toy | flow | " + " | ".join(f"{s} mean" for s in sides) + " | "
              + " | ".join(f"{p} − ours" for p in sides[1:]) + " |")
        print("|" + "---|" * (2 + 2 * len(sides) - 1))
        for toy, flow in itertools.product(toys, flows):
            ours = nlls[(toy, flow, "ours")]
            means = " | ".join(f"{statistics.mean(nlls[(toy, flow, s)]):.4f}" for s in sides)
            diffs = []
            for peer in sides[1:]:
                d = [a - b for a, b in zip(nlls[(toy, flow, peer)], ours, strict=True)]
                diffs.append(f"{statistics.mean(d):+.4f} ± {statistics.stdev(d) / math.sqrt(len(d)):.4f}")
            print(f"| {toy} | {flow.upper()} | {means} | {' | '.join(diffs)} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="training budget of each quality run")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of each speed comparison")
    p.add_argument("--target", type=float, default=0.3, help="seconds of calls per side per round")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for the speed tables")
    p.add_argument("--toys", default="moons,checkerboard")
    p.add_argument("--peers", default="zuko,nflows", help="those that do not import are skipped")
    p.add_argument("--flows", default="maf,nsf", help="the quality runs' flows")
    p.add_argument("--seeds", type=int, default=1,
                   help="quality runs per toy and flow, seeds 0..N-1 (initialisation and batch order)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    a = p.parse_args(argv)
    peers_ = []
    for lib in a.peers.split(","):
        if have(lib):
            peers_.append(lib)
        else:
            print(f"note: {lib} does not import; skipped")
    sides = ["ours", *peers_]
    versions = [f"torch {torch.__version__}"]
    for lib in peers_:
        versions.append(f"{lib} {importlib.metadata.version(lib)}")
    print(f"## {platform.processor() or platform.machine()}, {', '.join(versions)}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    if not a.skip_speed:
        torch.set_num_threads(a.threads)
        print(f"\nspeed: {torch.get_num_threads()} intra-op thread(s)")
        speed(sides, a.rounds, a.target)
    if not a.skip_quality:
        quality(sides, a.toys.split(","), a.seconds, a.flows.split(","), list(range(a.seeds)))
    print(f"\n{time.perf_counter() - t0:.0f} s in all; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
