"""Rezende & Mohamed's Fig. 3 on the four 2-D energies: KL(q‖p) of planar flows against length K.

    python benchmarks/vi_energies.py                                  # U1-U4, K = 2, 8, 32, 60 s each
    python benchmarks/vi_energies.py --targets u1,u2 --lengths 32 --seconds 300 --flows planar,radial

Each flow (a learned diagonal Gaussian base, then K layers) is fitted to ``p ∝ exp(−U)`` by
reverse KL with Adam (one thread, ``--batch`` samples a step, the learning rate decayed by a
half-cosine over the time budget, the target's weight annealed from 0.01 to 1 over the first
``--anneal`` fraction of it, as R&M do over their first 10,000 steps). Then ``p`` is normalised by
quadrature (midpoint rule on a 1200² grid over the target's box widened 1.5×) and
``KL(q‖p) = E_q[log q − log p]`` is estimated from ``--eval-samples`` fresh samples of ``q``
(± its standard error). ``U₂``–``U₄`` carry the soft wall outside ``|z₁| ≤ 4`` of
:mod:`realnvp.vi.targets` (as R&M write them they are not normalisable). Writes a table, the
KL-against-K plot and q beside each target to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from realnvp.vi import build_posterior, checked, estimate, get_target, log_normaliser, q_beside_target
from realnvp.vi.bounds import log_weights
from realnvp.viz import line_plot, save


def fit(q, target, seconds: float, batch: int, lr: float, anneal: float, max_steps: int | None = None) -> int:
    """Adam on the annealed reverse KL for ``seconds`` (or ``max_steps``); returns the steps."""
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    start, steps = time.process_time(), 0
    while (elapsed := time.process_time() - start) < seconds and (max_steps is None or steps < max_steps):
        frac = elapsed / seconds
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
        beta = min(1.0, 0.01 + frac / anneal) if anneal else 1.0
        _, log_q, log_p = log_weights(q, target, batch)
        loss = (log_q - beta * log_p).mean()
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(q.parameters(), 100.0)
            opt.step()
        steps += 1
    return steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="u1,u2,u3,u4")
    p.add_argument("--flows", default="planar")
    p.add_argument("--lengths", default="2,8,32")
    p.add_argument("--seconds", type=float, default=60.0, help="CPU seconds of fitting per flow")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--anneal", type=float, default=0.3, help="fraction of the budget annealed (0: none)")
    p.add_argument("--eval-samples", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/vi_energies")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = [int(k) for k in args.lengths.split(",")]
    rows, curves, pictures = [], {}, {}
    print(f"{'target':<7}{'flow':<8}{'K':>4}{'steps':>8}{'CPU s':>8}{'KL(q‖p) nats':>22}{'log Z':>9}")
    for name in args.targets.split(","):
        target = checked(get_target(name))
        log_z = log_normaliser(target, target.bounds)
        for flow in args.flows.split(","):
            for k in lengths:
                torch.manual_seed(args.seed)
                q = build_posterior(flow, 2, k)
                t0 = time.process_time()
                steps = fit(q, target, args.seconds, args.batch, args.lr, args.anneal)
                cpu = time.process_time() - t0
                g = torch.Generator().manual_seed(args.seed + 1)
                r = estimate(q, target, args.eval_samples, log_z=log_z, generator=g)
                row = dict(target=name, flow=flow, length=k, steps=steps, cpu_seconds=round(cpu, 1),
                           kl=r["kl"], kl_stderr=r["neg_elbo_stderr"], log_z=log_z, ess=r["ess"])
                rows.append(row)
                curves.setdefault(f"{name} {flow}", []).append((k, r["kl"]))
                pictures[(name, flow, k)] = q_beside_target(q, target, target.bounds, generator=g)
                print(f"{name:<7}{flow:<8}{k:>4}{steps:>8}{cpu:>8.0f}{r['kl']:>13.4f} ± "
                      f"{r['neg_elbo_stderr']:.4f}{log_z:>9.4f}", flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    save(line_plot(curves, xlabel="K"), out / "kl_against_k.png")
    for (name, flow, k), pic in pictures.items():
        save(pic, out / f"{name}_{flow}_K{k}.png")
    for name in args.targets.split(","):
        best = min((r for r in rows if r["target"] == name), key=lambda r: r["kl"])
        verdict = "yes" if best["kl"] <= 0.05 else "no"
        print(f"{name}: best KL {best['kl']:.4f} nats ({best['flow']} K={best['length']}, "
              f"{best['cpu_seconds']:.0f} CPU s): <= 0.05 nats: {verdict}")


if __name__ == "__main__":
    main()
