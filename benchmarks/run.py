"""Speed and memory of realnvp against peer implementations and against the machine's ceiling.

    python benchmarks/run.py            # default size, < 10 minutes on 2 cores
    python benchmarks/run.py --quick    # smoke run, ~2 minutes
    python benchmarks/run.py --full     # more rounds, bf16 peers, bf16 + memory-saving
    python benchmarks/run.py --device cuda   # the same tables on a GPU (fp32 with TF32 off; bf16)

Prints one table per workload (markdown), the ceiling, and the targets of issue 5 with met / not
met. Times are medians over interleaved rounds; ratios ("x peer") are medians of per-round ratios
to the fastest peer, so a slow phase of a shared machine hits both sides of a ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import (  # noqa: E402
    WORKLOADS,
    build,
    conv_ceiling,
    count_flops,
    environment,
    interleaved,
    make_batch,
    memory_probe_main,
    paired_ratio,
    peak_memory_probe,
)

IMAGE_PEERS_NOT_EXPRESSIBLE = {
    "nflows": "cannot express: coupling masks split channels only (no spatial checkerboard)",
    "FrEIA": "cannot express: coupling blocks split channels only (no spatial checkerboard)",
    "zuko": "cannot express: vector flows only (no convolutional couplings)",
    "normflows": "cannot express: checkerboard Split packs the half-image (B,C,H,W/2); "
                 "MaskedAffineFlow needs separate s and t networks",
}

SIZES = {
    # workload -> (batch, rounds); rounds count timed calls per variant after one warm-up
    "quick": dict(cifar10=(8, 1), mnist=(32, 2), digits=(64, 3), **{"toy-2d": (256, 3)},
                  **{"tabular-43d": (512, 3)}),
    "default": dict(cifar10=(64, 3), mnist=(64, 3), digits=(64, 5), **{"toy-2d": (256, 5)},
                    **{"tabular-43d": (512, 5)}),
    "full": dict(cifar10=(64, 5), mnist=(64, 7), digits=(64, 9), **{"toy-2d": (256, 9)},
                 **{"tabular-43d": (512, 9)}),
}


def variants_for(wl_name: str, size: str) -> list[str]:
    wl = WORKLOADS[wl_name]
    if wl["kind"] == "image":
        names = ["realnvp-fp32", "realnvp-bf16", "realnvp-fp32-memsave", "chrischute-fp32"]
        if size == "full":
            names += ["realnvp-bf16-memsave", "chrischute-bf16"]
        return names
    return ["realnvp-fp32", "realnvp-fp32-plain", "realnvp-bf16", "realnvp-fp32-memsave", "nflows", "zuko",
            "FrEIA", "normflows"]


def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def run_workload(wl_name: str, size: str, ceilings: dict, memory: bool) -> dict:
    wl = WORKLOADS[wl_name]
    batch, rounds = SIZES[size][wl_name]
    t0 = time.perf_counter()
    names = variants_for(wl_name, size)
    vs = {n: build(wl_name, n) for n in names}
    x = make_batch(wl, batch)
    small = make_batch(wl, 4 if wl["kind"] == "image" else 16, seed=2)
    nb = small.shape[0]
    def mode(training):  # set once per phase, outside the timed calls
        for v in vs.values():
            v.model.train(training)

    for v in vs.values():  # FLOPs per example (matmul/conv FLOPs, as FlopCounterMode counts)
        v.model.train()
        v.flops["train"] = count_flops(v.train, small) / nb
        v.model.eval()
        if v.evaluate:
            v.flops["eval"] = count_flops(v.evaluate, small) / nb
        if v.sample:
            v.flops["sample"] = count_flops(v.sample, nb) / nb
    res = {"batch": batch, "rounds": rounds, "variants": {}}
    mode(True)
    train_t = interleaved({n: v.train for n, v in vs.items()}, x, rounds)
    mode(False)
    eval_t = interleaved({n: v.evaluate for n, v in vs.items() if v.evaluate}, x, rounds)
    sample_t = interleaved({n: v.sample for n, v in vs.items() if v.sample}, batch, rounds)
    peer_names = [n for n, v in vs.items() if v.peer and v.precision == "fp32"]

    def fastest(times):
        cands = [n for n in peer_names if n in times]
        return min(cands, key=lambda n: statistics.median(times[n])) if cands else None

    best = {"train": fastest(train_t), "eval": fastest(eval_t), "sample": fastest(sample_t)}
    for n, v in vs.items():
        r = {"label": v.label, "note": v.note, "params": v.params, "precision": v.precision,
             "peer": v.peer, "gflop_per_example": {k: f / 1e9 for k, f in v.flops.items()}}
        for kind, times in (("train", train_t), ("eval", eval_t), ("sample", sample_t)):
            if n not in times:
                continue
            med = statistics.median(times[n])
            r[f"{kind}_per_s"] = batch / med
            r[f"{kind}_times"] = times[n]
            if best[kind] and n != best[kind]:
                r[f"{kind}_x_peer"] = paired_ratio(times, n, best[kind])
        gflops = v.flops["train"] * batch / statistics.median(train_t[n]) / 1e9
        r["train_gflop_s"] = gflops
        r["fraction_of_ceiling"] = gflops * 1e9 / ceilings[v.precision]["ceiling"]
        if memory:
            r["peak_memory"] = peak_memory_probe(wl_name, n, batch)
        res["variants"][n] = r
    res["fastest_peer"] = best
    res["seconds"] = time.perf_counter() - t0
    return res


def print_workload(wl_name: str, res: dict) -> None:
    wl = WORKLOADS[wl_name]
    unit = "img/s" if wl["kind"] == "image" else "ex/s"
    shape = wl.get("shape") or (wl["dim"],)
    print(f"\n### {wl_name}: {tuple(shape)}, {wl['model']}, batch {res['batch']}, "
          f"{res['rounds']} timed rounds ({res['seconds']:.0f} s)\n")
    print(f"| variant | params | train {unit} | × fastest peer | eval {unit} | × peer | "
          f"sample {unit} | × peer | GFLOP/ex train / eval / sample | train GFLOP/s | of ceiling "
          f"| peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for n, r in res["variants"].items():
        fl = r["gflop_per_example"]
        flops = " / ".join(fmt(fl.get(k), 3) for k in ("train", "eval", "sample"))
        mem = r.get("peak_memory", {})
        mem_s = fmt(mem.get("peak_mb"), 0) if "peak_mb" in mem else ("err" if mem else "—")
        xs = [fmt(r.get(f"{k}_x_peer"), 2) + "×" if r.get(f"{k}_x_peer") else
              ("(fastest)" if res["fastest_peer"].get(k) == n else "—") for k in ("train", "eval",
                                                                               "sample")]
        print(f"| {n} | {r['params']:,} | {fmt(r.get('train_per_s'))} | {xs[0]} | "
              f"{fmt(r.get('eval_per_s'))} | {xs[1]} | {fmt(r.get('sample_per_s'))} | {xs[2]} | "
              f"{flops} | {fmt(r['train_gflop_s'], 0)} | {100 * r['fraction_of_ceiling']:.0f}% "
              f"| {mem_s} |")
    if wl["kind"] == "image":
        for lib, why in IMAGE_PEERS_NOT_EXPRESSIBLE.items():
            print(f"| {lib} | — | {why} | | | | | | | | | |")
    notes = {n: r["note"] for n, r in res["variants"].items() if r["note"]}
    for n, note in notes.items():
        print(f"\n- {n}: {res['variants'][n]['label']}; {note}", end="")
    print()


def targets(results: dict, ceilings: dict) -> list[tuple[str, str, bool | None]]:
    out = []
    c = results.get("cifar10")
    if not c:
        return out
    v = c["variants"]
    fp32, bf16 = v["realnvp-fp32"], v["realnvp-bf16"]
    out.append(("fp32 train >= 90% of the fp32 conv ceiling (CIFAR-10 model)",
                f"{100 * fp32['fraction_of_ceiling']:.0f}%", fp32["fraction_of_ceiling"] >= 0.9))
    for wl_name, r in results.items():
        f = r["variants"]["realnvp-fp32"]
        for kind in ("train", "eval", "sample"):
            x = f.get(f"{kind}_x_peer")
            if x is not None:
                out.append((f"{wl_name}: fp32 {kind} not slower than the fastest peer", f"{x:.2f}×",
                            x >= 1.0))
    out.append(("bf16 train >= 2x the fastest peer's fp32 (CIFAR-10)",
                f"{bf16.get('train_x_peer', 0):.2f}×", bf16.get("train_x_peer", 0) >= 2.0))
    for wl_name, r in results.items():
        if WORKLOADS[wl_name]["kind"] != "image":
            continue
        b = r["variants"]["realnvp-bf16"]
        out.append((f"{wl_name}: bf16 sampling >= 2x the fastest peer", f"{b.get('sample_x_peer', 0):.2f}×",
                    b.get("sample_x_peer", 0) >= 2.0))
        f = r["variants"]["realnvp-fp32"]
        out.append((f"{wl_name}: fp32 sampling >= 2x the fastest peer",
                    f"{f.get('sample_x_peer', 0):.2f}×", f.get("sample_x_peer", 0) >= 2.0))
    ms = v["realnvp-fp32-memsave"]
    if "peak_mb" in ms.get("peak_memory", {}) and "peak_mb" in fp32.get("peak_memory", {}):
        ratio = ms["peak_memory"]["peak_mb"] / fp32["peak_memory"]["peak_mb"]
        out.append((f"memory-saving peak memory <= 0.5x plain autograd (CIFAR-10, batch {c['batch']})",
                    f"{ratio:.2f}×", ratio <= 0.5))
    slow = paired_time_ratio(c, "realnvp-fp32-memsave", "realnvp-fp32")
    out.append(("memory-saving step time <= 1.3x plain autograd (CIFAR-10)", f"{slow:.2f}×", slow <= 1.3))
    return out


def paired_time_ratio(res, a, b):
    ta, tb = res["variants"][a]["train_times"], res["variants"][b]["train_times"]
    return statistics.median(x / y for x, y in zip(ta, tb, strict=True))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="size", const="quick")
    g.add_argument("--full", action="store_const", dest="size", const="full")
    p.set_defaults(size="default")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of " + ", ".join(WORKLOADS))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; peak memory on a GPU is "
                   "the allocator's peak above the model, on the CPU the process's resident memory")
    p.add_argument("--json", help="also write all numbers to this JSON file")
    p.add_argument("--memory-probe", nargs=3, metavar=("WORKLOAD", "VARIANT", "BATCH"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_device(args.device)
    if args.memory_probe:
        wl, var, b = args.memory_probe
        memory_probe_main(wl, var, int(b))
        return
    t0 = time.perf_counter()
    env = environment()
    cmd = "python benchmarks/run.py" + {"default": "", "quick": " --quick", "full": " --full"}[args.size]
    if args.device != "cpu":
        cmd += f" --device {args.device}"
    print(f"# realnvp benchmarks — `{cmd}` — {datetime.date.today()}\n")
    print(f"torch {env['torch']}, {env['cpu']}, {env['cores']} cores, {env['threads']} intra-op threads, "
          f"ISA {'/'.join(env['isa'])}; device {env['device']}" + (f" ({env['gpu']})" if env["gpu"] else "")
          + f", native bf16: {env['bf16_native']}; load average at start {env['load'][0]:.2f}")
    rounds = {"quick": 3, "default": 5, "full": 9}[args.size]
    ceilings = {prec: conv_ceiling(prec, rounds) for prec in ("fp32", "bf16")}
    print("\n### Ceiling\n")
    print(f"{ceilings['fp32']['shape']}:")
    for prec, c in ceilings.items():
        print(f"- {prec}: NCHW {c['nchw'] / 1e9:.0f} GFLOP/s, channels-last "
              f"{c['channels_last'] / 1e9:.0f} GFLOP/s → ceiling **{c['ceiling'] / 1e9:.0f} GFLOP/s**")
    results = {}
    for wl_name in args.workloads.split(","):
        results[wl_name] = run_workload(wl_name, args.size, ceilings, memory=not args.no_memory)
        print_workload(wl_name, results[wl_name])
        sys.stdout.flush()
    print("\n### Targets (issue 5)\n")
    print("| target | measured | met |")
    print("|---|---:|:---:|")
    for name, value, met in targets(results, ceilings):
        print(f"| {name} | {value} | {'yes' if met else 'NO'} |")
    end = environment()
    print(f"\nthreads {env['threads']}; load average at end {end['load'][0]:.2f}; "
          f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, ceilings=ceilings, results=results, size=args.size,
                           date=str(datetime.date.today())), f, indent=1, default=str)


if __name__ == "__main__":
    main()
