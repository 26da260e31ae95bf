"""A/B experiments behind the choices in BENCHMARKS.md ("what was tried").

    python benchmarks/experiments.py channels-last   # WNConv2d.channels_last on/off
    python benchmarks/experiments.py threads         # 1 vs 2 intra-op threads
    python benchmarks/experiments.py compile         # torch.compile, its compile time included
    python benchmarks/experiments.py compile --device cuda --compile-mode reduce-overhead   # + CUDA graphs
    python benchmarks/experiments.py fold            # eval/sampling with and without batch-norm folding
    python benchmarks/experiments.py phases --workload toy-2d   # forward/backward/optimizer vs FrEIA

Each pair is timed alternately (A, B, A, B, ...) and reported as medians and the median of the
per-pair ratios. ``--cpu-time`` measures process CPU time instead of wall-clock time (steadier on
a shared machine for single-threaded runs; meaningless for multi-threaded comparisons).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import WORKLOADS, build, make_batch  # noqa: E402
from realnvp.nets import WNConv2d  # noqa: E402


def alternate(a, b, pairs, clock):
    ta, tb = [], []
    for _ in range(pairs):
        for f, ts in ((a, ta), (b, tb)):
            common.sync()
            t = clock()
            f()
            common.sync()
            ts.append(clock() - t)
    ratio = statistics.median(y / x for x, y in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["channels-last", "threads", "compile", "fold", "phases"])
    p.add_argument("--workload", default="digits", choices=sorted(WORKLOADS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--cpu-time", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (fp32 with TF32 off)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile's mode for `compile` (reduce-overhead: CUDA graphs on a GPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_device(args.device)
    wl = WORKLOADS[args.workload]
    x = make_batch(wl, args.batch or wl["batch"])
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.what == "phases":
        return phases(args.workload, x, args.pairs * 30, args.precision)
    v = build(args.workload, f"realnvp-{args.precision}")
    v.model.train()
    step = lambda: v.train(x)
    step()
    print(f"{args.workload}, batch {len(x)}, {args.precision}, threads {torch.get_num_threads()}, "
          f"device {args.device}, {'CPU' if args.cpu_time else 'wall'} time")
    if args.what == "fold":
        from realnvp.nets import resnet

        folded, plain = resnet.ResidualBlock.forward, lambda self, h: h + self.net(h)
        v.model.eval()

        def infer(fold):
            def f():
                resnet.ResidualBlock.forward = folded if fold else plain
                v.evaluate(x)
                v.sample(len(x))
            return f

        try:
            a, b, r = alternate(infer(True), infer(False), args.pairs, clock)
        finally:
            resnet.ResidualBlock.forward = folded
        print(f"eval + sample: folded batch norm {a * 1e3:.1f} ms, unfolded {b * 1e3:.1f} ms: "
              f"folded {r:.3f}x faster")
    elif args.what == "channels-last":

        def layout(flag):
            def f():
                WNConv2d.channels_last = flag
                step()
            return f

        for flag in (True, False):  # warm-up: cuDNN picks its algorithms for each layout once
            layout(flag)()
        try:
            a, b, r = alternate(layout(True), layout(False), args.pairs, clock)
        finally:
            WNConv2d.channels_last = None
        print(f"channels-last {a * 1e3:.1f} ms, NCHW {b * 1e3:.1f} ms: channels-last {r:.2f}x faster")
    elif args.what == "threads":

        def threads(n):
            def f():
                torch.set_num_threads(n)
                step()
            return f

        a, b, r = alternate(threads(1), threads(2), args.pairs, clock)
        print(f"1 thread {a * 1e3:.1f} ms, 2 threads {b * 1e3:.1f} ms: 1 thread {r:.2f}x faster")
    else:
        compiled = build(args.workload, f"realnvp-{args.precision}")
        compiled.model.train()
        compiled.model.bijector = torch.compile(compiled.model.bijector, mode=args.compile_mode)
        t = time.perf_counter()
        compiled.train(x)
        first = time.perf_counter() - t
        compiled.train(x)  # a second compile may follow (e.g. grad mode / mode guards)
        a, b, r = alternate(lambda: compiled.train(x), step, args.pairs, clock)
        print(f"torch.compile: first step {first:.1f} s (compilation), then {a * 1e3:.1f} ms vs eager "
              f"{b * 1e3:.1f} ms: compiled {r:.2f}x faster; break-even after "
              f"{first / max(b - a, 1e-9):.0f} steps" if b > a else
              f"torch.compile: first step {first:.1f} s, then {a * 1e3:.1f} ms vs eager {b * 1e3:.1f} ms "
              f"(not faster)")


def _now() -> float:
    common.sync()  # a GPU's queued work counts where it was queued
    return time.perf_counter()


def phases(wl_name, x, steps, prec):
    """Median milliseconds of the forward pass (loss), backward pass and optimizer step, ours
    (default; without batch norm; without batch norm and weight norm) against FrEIA, interleaved
    step by step."""
    names = [f"realnvp-{prec}", f"realnvp-{prec}-nobn", f"realnvp-{prec}-plain", "FrEIA"]
    runs = {}
    for n in names:
        v = build(wl_name, n)
        v.model.train()
        log_prob = (lambda m: lambda y: common._freia_log_prob(m, y))(v.model) if n == "FrEIA" \
            else v.model.log_prob
        runs[n] = (v, torch.optim.Adam(v.model.parameters(), lr=1e-3, fused=True), log_prob, ([], [], []))
    for _ in range(steps):
        for _v, opt, log_prob, ts in runs.values():
            opt.zero_grad(set_to_none=True)
            t0 = _now()
            with common.precision.autocast(common.DEVICE, "fp32" if _v.peer else prec):
                loss = -log_prob(x).mean()
            t1 = _now()
            loss.backward()
            t2 = _now()
            opt.step()
            t3 = _now()
            for acc, d in zip(ts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                acc.append(d)
    print(f"{wl_name}, batch {len(x)}, threads {torch.get_num_threads()}, {steps} steps, median ms")
    print("| variant | forward | backward | optimizer | total | parameter tensors |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, (v, _, _, ts) in runs.items():
        med = [statistics.median(t) * 1e3 for t in ts]
        print(f"| {n} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {sum(med):.2f} | "
              f"{len(list(v.model.parameters()))} |")


if __name__ == "__main__":
    main()
