"""bf16 against fp32 over several seeds: mean learning curves and their paired differences.

    for s in 0 1 2 3; do
        python benchmarks/quality.py --data digits --steps 1000 --eval-every 50 --threads 1 \\
            --seed $s --json digits-seed$s.json
    done
    python benchmarks/quality_seeds.py digits-seed*.json [-o digits-seeds.png]

One run of ``quality.py`` trains fp32 and bf16 from the same initialisation on the same batches;
after a few hundred steps the two trajectories differ by as much as two fp32 runs whose
initialisations differ at round-off (the ``fp32-perturbed`` control), so a single pair cannot
show a difference smaller than that noise. Averaged over seeds it can: for every evaluation step
this prints the mean test bits/dim of each precision, the mean of the paired differences
(bf16 − fp32, same seed) and its standard error, and the seed-to-seed spread of fp32 for scale.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics


def summarize(results: list[dict], other: str = "bf16") -> list[dict]:
    """One row per evaluation step common to every run: ``step``, ``fp32`` and ``other`` (mean
    test bits/dim), ``diff`` (mean of other − fp32 over seeds), ``se`` (its standard error),
    ``fp32_sd`` (standard deviation of fp32 across seeds)."""
    curves = []
    for r in results:
        c = r["curves"]
        if "fp32" not in c or other not in c:
            raise SystemExit(f"a run (seed {r.get('seed')}) lacks an fp32 or {other} curve")
        curves.append({e["step"]: (a["test_bpd_fp32_eval"], e["test_bpd_fp32_eval"])
                       for a, e in zip(c["fp32"], c[other], strict=True)})
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    rows = []
    for s in steps:
        ref = [c[s][0] for c in curves]
        val = [c[s][1] for c in curves]
        d = [v - f for f, v in zip(ref, val, strict=True)]
        n = len(d)
        rows.append(dict(step=s, fp32=statistics.fmean(ref), other=statistics.fmean(val),
                         diff=statistics.fmean(d),
                         se=statistics.stdev(d) / math.sqrt(n) if n > 1 else float("nan"),
                         fp32_sd=statistics.stdev(ref) if n > 1 else float("nan")))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="JSON files written by quality.py --json, one per seed")
    p.add_argument("--other", default="bf16", help="the run compared with fp32 (bf16, fp32-perturbed)")
    p.add_argument("--band", type=float, default=0.01, help="bits/dim (issue 5: 0.01)")
    p.add_argument("-o", "--out", default=None, help="also draw a PNG (needs matplotlib)")
    args = p.parse_args(argv)
    results = [json.load(open(f)) for f in args.files]
    seeds = sorted(r.get("seed", 0) for r in results)
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the files repeat a seed: {seeds}")
    rows = summarize(results, args.other)
    data = {r["data"] for r in results}
    print(f"{', '.join(sorted(data))}: {len(results)} seeds {seeds}, {args.other} against fp32 "
          f"(same seed: same initialisation and batches), test bits/dim")
    print(f"| step | fp32 mean | {args.other} mean | mean difference ± SE | fp32 spread (SD) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['fp32']:.4f} | {r['other']:.4f} | {r['diff']:+.4f} ± {r['se']:.4f} "
              f"| {r['fp32_sd']:.4f} |")
    trained = [r for r in rows if r["step"] > 0]
    worst = max(trained, key=lambda r: abs(r["diff"]))
    inside = sum(abs(r["diff"]) <= args.band for r in trained)
    print(f"largest |mean difference| after step 0: {abs(worst['diff']):.4f} at step {worst['step']} "
          f"(± {worst['se']:.4f}); {inside} of {len(trained)} points within ±{args.band}; "
          f"mean over the curve {statistics.fmean(r['diff'] for r in trained):+.4f}")
    best = [best_pair(r, args.other) for r in results]
    d = [b - a for a, b in best]
    mean_fp32, mean_other = statistics.fmean(a for a, _ in best), statistics.fmean(b for _, b in best)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"best test bits/dim of each run (early stopping), mean over seeds: fp32 {mean_fp32:.4f}, "
          f"{args.other} {mean_other:.4f}; paired difference {statistics.fmean(d):+.4f} ± {se:.4f} (SE)")
    if args.out:
        _plot(rows, args, sorted(data), len(results))


def best_pair(result: dict, other: str) -> tuple[float, float]:
    """The lowest test bits/dim along the fp32 curve and along the ``other`` curve of one run."""
    return tuple(min(e["test_bpd_fp32_eval"] for e in result["curves"][k]) for k in ("fp32", other))


def _plot(rows, args, data, n):
    from plot_quality import figure, finish

    rows = [r for r in rows if r["step"] > 0]
    steps = [r["step"] for r in rows]
    fig, top, bottom = figure(args.band)
    top.plot(steps, [r["fp32"] for r in rows], marker=".", label=f"fp32 (mean of {n} seeds)")
    top.plot(steps, [r["other"] for r in rows], marker=".", label=f"{args.other} (mean of {n} seeds)")
    diff = [r["diff"] for r in rows]
    se = [r["se"] for r in rows]
    bottom.fill_between(steps, [d - 2 * s for d, s in zip(diff, se, strict=True)],
                        [d + 2 * s for d, s in zip(diff, se, strict=True)], alpha=0.3, label="±2 SE")
    bottom.plot(steps, diff, marker=".", label=f"{args.other} − fp32, mean over seeds")
    finish(fig, top, bottom, ", ".join(data), args.out)


if __name__ == "__main__":
    main()
