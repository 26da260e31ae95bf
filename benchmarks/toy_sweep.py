"""A quick sweep of the spline-coupling toy recipe: a fixed number of optimizer steps of a plain
loop, the test NLL's gap to the entropy, and the process CPU seconds, one line of JSON per run.

    python benchmarks/toy_sweep.py rings --set bins=16 --set spline_bound=4.5 --set steps=3000
    python benchmarks/toy_sweep.py checkerboard --set num_layers=3 --set seed=1

Not the command line's training: no validation split or checkpoint selection, every one of the
20000 training points used, the cosine decay over ``steps``; Adam (fused), gradient norm clipped
at 100, one thread, as ``configs/toy.json``. It is for comparing recipes against each other
quickly; `benchmarks/toy_floor.py` measures what ``realnvp train`` gives. Keys (defaults: the
shipped toy recipe): ``num_couplings`` 6, ``hidden`` 64, ``num_layers`` (hidden layers per MLP) 2,
``bins`` 8, ``spline_bound`` 5, ``linear`` none, ``batch_size`` 256, ``lr`` 3e-3, ``steps`` 4700
(60 epochs of 20000 at batch 256), ``seed`` 0.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from realnvp.data.toy import ENTROPY_NATS, sample_toy
from realnvp.models.autoregressive import NSFCoupling

DEFAULTS = dict(num_couplings=6, hidden=64, num_layers=2, bins=8, spline_bound=5.0, linear="none",
                batch_size=256, lr=3e-3, steps=4700, seed=0, train_size=20000)


def run(name: str, cfg: dict) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    train = torch.from_numpy(sample_toy(name, cfg["train_size"], cfg["seed"], "train"))
    test = torch.from_numpy(sample_toy(name, 5000, 0, "test"))
    model = NSFCoupling(2, num_layers=cfg["num_couplings"], hidden=cfg["hidden"],
                        num_hidden_layers=cfg["num_layers"], bins=cfg["bins"], bound=cfg["spline_bound"],
                        linear=None if cfg["linear"] == "none" else cfg["linear"])
    opt = torch.optim.Adam(model.parameters(), cfg["lr"], fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    g = torch.Generator().manual_seed(cfg["seed"])
    b, step, t0 = cfg["batch_size"], 0, time.process_time()
    while step < cfg["steps"]:
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train) - b + 1, b):
            loss = -model.log_prob(train[perm[i:i + b]]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()
            sched.step()
            step += 1
            if step == cfg["steps"]:
                break
    cpu = time.process_time() - t0
    model.eval()
    with torch.no_grad():
        nll = -model.log_prob(test).mean().item()
        train_nll = -model.log_prob(train[:5000]).mean().item()
    return {"toy": name, **cfg, "gap": round(nll - ENTROPY_NATS[name], 4),
            "train_gap": round(train_nll - ENTROPY_NATS[name], 4), "cpu_s": round(cpu, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("toy", choices=sorted(ENTROPY_NATS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    cfg = dict(DEFAULTS)
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in DEFAULTS:
            p.error(f"unknown key {key!r}; known: {', '.join(DEFAULTS)}")
        cfg[key] = type(DEFAULTS[key])(value)
    print(json.dumps(run(args.toy, cfg)), flush=True)


if __name__ == "__main__":
    main()
