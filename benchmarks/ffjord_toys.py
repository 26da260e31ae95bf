"""FFJORD on the 2-D toys: test NLL against the generator's entropy, and zuko's CNF side by side.

Ours runs through the command line (``realnvp train --data toy:NAME --set model=ffjord``) with the
reference code's toy setting (concat-squash MLP 64-64-64, tanh, one block, dopri5 at 1e-5, exact
trace, learnt T = 0.5); zuko's ``CNF`` (when installed) gets the same widths, tolerances, data,
optimiser and wall-clock. Each reports the test NLL (nats), its gap to the entropy
(:data:`realnvp.data.toy.ENTROPY_NATS`), the steps taken and the mean NFE of a training forward solve.

    python benchmarks/ffjord_toys.py --toys moons 8gaussians --seconds 600 --threads 1

``--set KEY=VALUE`` changes our run only (e.g. the faster recipe: ``--set lr=3e-3 --set
toy_train_size=1000000 --set ode_rtol=1e-3 --set ode_atol=1e-3 --set ode_test_rtol=1e-5 --set
ode_test_atol=1e-5``, training at loose tolerances and scoring at the reference's; with lr 5e-3
and batch 512 it is ``configs/ffjord-toy.json``): use it with ``--no-zuko``, since zuko's side
keeps the reference setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from realnvp.data.toy import DEFAULT_SIZES, ENTROPY_NATS, sample_toy


def ours(name: str, seconds: float, threads: int, batch: int, lr: float, out: Path,
         extra: list[str] = ()) -> dict:
    cmd = [sys.executable, "-m", "realnvp", "train", "--data", f"toy:{name}", "--out", str(out), "--quiet",
           "--device", "cpu", "--time-budget", str(seconds), "--epochs", "100000",
           "--set", "model=ffjord", "--set", "hidden=64", "--set", "num_layers=3", "--set", "num_blocks=1",
           "--set", f"batch_size={batch}", "--set", f"lr={lr}", "--set", "l2=0", "--set", "valid_size=0",
           "--set", "sample_every=0", "--set", f"threads={threads}", "--set", "eval_dequant_samples=1",
           "--set", f"toy_train_size={DEFAULT_SIZES['train']}"]  # the points zuko's loop sees
    for item in extra:
        cmd += ["--set", item]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((out / "eval.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        nfe = [float(r["nfe"]) for r in csv.DictReader(f)]
    return {"nll": result["nll_nats"], "steps": result["steps"], "nfe": sum(nfe) / len(nfe) if nfe else None,
            "wall": time.monotonic() - t0}


def theirs(name: str, seconds: float, threads: int, batch: int, lr: float) -> dict | None:
    try:
        import zuko
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train = torch.from_numpy(sample_toy(name, DEFAULT_SIZES["train"], 0, "train"))
    test = torch.from_numpy(sample_toy(name, DEFAULT_SIZES["test"], 0, "test"))
    flow = zuko.flows.CNF(2, hidden_features=(64, 64, 64), atol=1e-5, rtol=1e-5, exact=True)
    calls = [0]
    for m in flow.modules():  # count evaluations of the dynamics: the MLP's forward
        if type(m).__name__ == "MLP":
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
            break
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    steps, nfe, t0 = 0, 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        perm = torch.randperm(len(train))
        for i in range(0, len(train) - batch + 1, batch):
            calls[0] = 0
            loss = -flow().log_prob(train[perm[i:i + batch]]).mean()
            nfe += calls[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.monotonic() - t0 >= seconds:
                break
    with torch.no_grad():
        nll = -torch.cat([flow().log_prob(b) for b in test.split(1000)]).mean().item()
    return {"nll": nll, "steps": steps, "nfe": nfe / max(steps, 1), "wall": time.monotonic() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", nargs="+", default=["moons", "8gaussians"])
    p.add_argument("--seconds", type=float, default=600.0, help="training wall-clock per model and toy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-zuko", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a configuration key for our run only (repeatable)")
    args = p.parse_args()
    print(f"{'toy':<12}{'model':<8}{'test NLL':>10}{'entropy':>9}{'gap':>8}{'steps':>7}{'NFE':>7}"
          f"{'wall s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.toys:
            h = ENTROPY_NATS.get(name, float("nan"))
            rows = {"realnvp": ours(name, args.seconds, args.threads, args.batch, args.lr, Path(tmp) / name,
                                   args.set)}
            if not args.no_zuko:
                rows["zuko"] = theirs(name, args.seconds, args.threads, args.batch, args.lr)
            for model, r in rows.items():
                if r is None:
                    print(f"{name:<12}{model:<8}  (not installed)")
                    continue
                nfe = f"{r['nfe']:.0f}" if r["nfe"] is not None else "-"
                print(f"{name:<12}{model:<8}{r['nll']:>10.4f}{h:>9.4f}{r['nll'] - h:>+8.4f}{r['steps']:>7}"
                      f"{nfe:>7}{r['wall']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
