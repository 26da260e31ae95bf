"""Plot learning curves written by ``quality.py --json``: test bits/dim against steps.

    python benchmarks/plot_quality.py benchmarks/results/quality-epyc-mnist-long.json -o mnist.png

Each JSON file may hold several runs (fp32, bf16, fp32-perturbed); every run becomes one line,
labelled with the file's device. A second panel shows each run's difference from the fp32 run of
the same file, with the ±0.01 bits/dim band of issue 5. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("-o", "--out", required=True, help="PNG file to write")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)

    fig, top, bottom = figure()
    for path in args.files:
        with open(path) as f:
            result = json.load(f)
        where = result.get("device") or os.path.basename(path)
        curves = result["curves"]
        ref = {e["step"]: e["test_bpd_fp32_eval"] for e in curves.get("fp32", [])}
        for name, curve in curves.items():
            steps = [e["step"] for e in curve if e["step"] > 0]
            bpd = [e["test_bpd_fp32_eval"] for e in curve if e["step"] > 0]
            (line,) = top.plot(steps, bpd, marker=".", label=f"{name} ({where})")
            if name != "fp32" and ref:
                pairs = [(s, b - ref[s]) for s, b in zip(steps, bpd, strict=True) if s in ref]
                bottom.plot(*zip(*pairs, strict=True), marker=".", color=line.get_color(),
                            label=f"{name} − fp32")
    title = args.title or ", ".join(sorted({json.load(open(f))["data"] for f in args.files}))
    finish(fig, top, bottom, title, args.out)


def figure(band: float = 0.01):
    """A figure with the learning curves' panel on top and, below, the differences' panel with
    the ±``band`` bits/dim region shaded: ``(fig, top, bottom)``. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(2, 1))
    bottom.axhspan(-band, band, color="0.9", label=f"±{band}")
    bottom.axhline(0, color="0.5", linewidth=0.8)
    return fig, top, bottom


def finish(fig, top, bottom, title: str, out: str) -> None:
    """Label both panels of :func:`figure` and write it to ``out`` (PNG)."""
    top.set_ylabel("test bits/dim")
    top.set_title(title)
    top.legend(fontsize=8)
    bottom.set_xlabel("training step (batch 64)")
    bottom.set_ylabel("difference")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
