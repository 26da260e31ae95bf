"""The cost's scale: the authors' (NLL in nats per example) against bits/dim, learning curves.

    python benchmarks/l2_scale.py --data digits --seeds 0,1

The authors' code minimises ``nll_nats + l2·Σθ²`` and clips that gradient at norm 100; this
package did ``bpd + l2·Σθ²`` with the clip on the bits/dim gradient. Since
``bpd = (nll_nats + D ln K)/(D ln 2)``, the old cost is the new one divided by ``D ln 2`` with
``l2' = l2·D·ln 2`` and ``clip' = 100·D·ln 2`` on the nats gradient, and Adam does not see a
constant scale of the loss (but for its ε), so the old recipe is run exactly as
``--set l2=… grad_clip=…``. Prints the validation curve of each and the final test figure of the
selected checkpoint (the recipe's own selection on the validation split).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from realnvp.config import read_config_file
from realnvp.training import load_training_data, train


def curves(cfg, seeds):
    out = []
    data = load_training_data(cfg)
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg.replace(seed=seed), Path(tmp) / "run", quiet=True,
                           log=lambda *a: None, data=data)
            rows = (Path(tmp) / "run" / "metrics.csv").read_text().splitlines()[1:]
        out.append(([float(r.split(",")[3]) for r in rows], result))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    cfg = read_config_file(args.data)
    if args.epochs:
        cfg = cfg.replace(epochs=args.epochs)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_training_data(cfg.replace(epochs=1))
    scale = data.info.dim * math.log(2)
    old = cfg.replace(l2=cfg.l2 * scale, grad_clip=cfg.grad_clip * scale)
    runs = {"authors' (nats)": curves(cfg, seeds), "bits/dim (before)": curves(old, seeds)}
    print(f"{args.data}: D ln 2 = {scale:.1f}; seeds {seeds}; validation bits/dim per epoch (mean)")
    print("| epoch | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for e in range(cfg.epochs):
        cells = [sum(c[e] for c, _ in r) / len(r) for r in runs.values()]
        print(f"| {e + 1} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    for name, r in runs.items():
        tests = [res["bits_per_dim"] for _, res in r]
        iw = [res["importance_weighted_bpd"] for _, res in r]
        per_seed = ", ".join(f"{t:.4f}" for t in tests)
        print(f"{name}: test {sum(tests) / len(tests):.4f} (per seed {per_seed}), "
              f"importance-weighted {sum(iw) / len(iw):.4f}, selected epochs "
              f"{[res['selected_epoch'] for _, res in r]}")


if __name__ == "__main__":
    main()
