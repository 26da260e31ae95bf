"""A VAE with a flow posterior through the training loop (Rezende & Mohamed 2015, §6.2).

The trainer's ``model`` seam builds the :class:`~realnvp.vi.vae.VAE` (encoder, posterior flow,
decoder: all saved under ``model.``), :class:`NegativeELBO` is the objective, the data are an
image data set of the registry. So a run has ``config.json``, ``vae.json`` (the VAE's
arguments), checkpoints, ``metrics.csv`` (``train_neg_elbo``, ``valid_neg_elbo``), ``eval.json``
and exact resume, as ``realnvp train`` runs do.

- Training: dynamic binarisation (every batch's pixels are fresh ``Bernoulli(level / (K − 1))``
  draws), one posterior sample per image, the batch's mean negative ELBO in nats per image;
  with ``anneal_steps`` > 0, R&M's annealed free energy ``E_q[log q(z|x) − β_t·log p(x, z)]``,
  ``β_t = min(1, 0.01 + t/anneal_steps)`` (§6: 10,000 iterations) instead. ``train_neg_elbo``
  is the un-annealed negative ELBO either way.
- Selection after every epoch: the negative ELBO (one draw per image) of the validation split
  binarised once with a fixed generator.
- ``eval.json`` (the test split, binarised once with the seed): ``neg_elbo`` (the mean over the
  ``S`` draws per image) and ``nll_iw``, the importance-weighted estimate of ``−log p(x)``
  with ``S = iw_samples`` draws per image (R&M / Burda et al.: 5000), both in nats per image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from .. import atomic
from ..config import Config
from ..data import DataInfo
from ..inputs import batch_parts
from ..runs import RunError
from ..vi.bounds import annealed_beta, elbo
from ..vi.vae import VAE, binarize, bounds, check_posterior
from .data import TrainingData, load_training_data
from .objectives import Objective

#: The file of a VAE run's directory holding the VAE's arguments (read by ``--resume``).
VAE_FILE = "vae.json"


def flat_images(batch, info: DataInfo, device) -> Tensor:
    """A loader's image batch as ``(B, D)`` pixel levels on ``device`` (labels dropped)."""
    x, _ = batch_parts(batch, info, device)
    return x.to(device).reshape(x.shape[0], -1)


def fixed_binarisation(dataset, info: DataInfo, seed: int, device) -> Tensor:
    """Every image of ``dataset`` binarised once with a generator seeded by ``seed``: ``(N, D)``."""
    g = torch.Generator().manual_seed(seed)
    rows = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([r if isinstance(r, Tensor) else r[0] for r in rows]).reshape(len(rows), -1)
    return binarize(x, info.num_levels, generator=g).to(device)


class NegativeELBO(Objective):
    """``−E_q[log p(x, z) − log q(z|x)]`` of dynamically binarised images (one draw per image).

    Args:
        iw_samples: ``S``, draws per test image of the final importance-weighted estimate.
        eval_batch: images per evaluation pass (with all their draws, in chunks).
        anneal_steps: optimizer steps over which the weight of ``log p(x, z)`` in the training
            loss rises from ``beta0`` to 1 (R&M §6); 0: the plain negative ELBO.
    """

    metric = "neg_elbo"
    score_key = "neg_elbo"
    unit = "nats"

    def __init__(self, iw_samples: int = 5000, eval_batch: int = 100, anneal_steps: int = 0,
                 beta0: float = 0.01):
        super().__init__()
        if iw_samples < 1 or eval_batch < 1:
            raise ValueError("iw_samples and eval_batch must be >= 1")
        if not isinstance(anneal_steps, int) or anneal_steps < 0:
            raise ValueError(f"anneal_steps must be an integer >= 0, got {anneal_steps!r}")
        self.iw_samples, self.eval_batch = iw_samples, eval_batch
        self.anneal_steps, self.beta0 = anneal_steps, beta0
        self._binarised: dict[int, Tensor] = {}

    def setup(self, ctx) -> None:
        if ctx.data.info.kind != "image" or not ctx.data.info.num_levels:
            raise ValueError(f"a VAE needs an image data set; {ctx.data.info.name} is "
                             f"{ctx.data.info.kind} data")

    def loss(self, ctx, batch) -> tuple[Tensor, Tensor]:
        x = binarize(flat_images(batch, ctx.data.info, ctx.device), ctx.data.info.num_levels)
        log_p, log_q = ctx.net.log_densities(x, 1)
        beta = annealed_beta(ctx.state.step, self.anneal_steps, self.beta0)
        return -elbo(log_p, log_q, beta), (log_q - log_p).mean().detach()

    def _data(self, ctx, dataset, salt: int) -> Tensor:
        key = id(dataset)
        if key not in self._binarised:
            self._binarised[key] = fixed_binarisation(dataset, ctx.data.info, ctx.cfg.seed + salt,
                                                      ctx.device)
        return self._binarised[key]

    def evaluate(self, ctx, model: VAE, dataset, final: bool, progress: bool = False) -> dict:
        x = self._data(ctx, dataset, 1 if final else 2)
        s = self.iw_samples if final else 1
        g = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed + (7 if final else 0))
        was = model.training
        model.eval()
        elbos, iws = [], []
        for start in range(0, x.shape[0], self.eval_batch):
            e, w = bounds(model, x[start:start + self.eval_batch], s, generator=g)
            elbos.append(e)
            iws.append(w)
        model.train(was)
        e, w = torch.cat(elbos), torch.cat(iws)
        out = {"neg_elbo": float(-e.mean()), "neg_elbo_stderr": float(e.std() / math.sqrt(len(e))),
               "num_images": int(x.shape[0])}
        if final:
            out.update(nll_iw=float(-w.mean()), iw_samples=s)
        return out


def write_spec(run_dir: Path, spec: dict) -> None:
    atomic.write_text(Path(run_dir) / VAE_FILE, json.dumps(spec, indent=2) + "\n")


def read_spec(run_dir: str | Path) -> dict:
    """The ``vae.json`` of a run that :func:`train_vae` wrote (runs written before the IAF
    transformer and annealing were choices had the affine IAF and no annealing)."""
    path = Path(run_dir) / VAE_FILE
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run of realnvp vae (no {VAE_FILE})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from e
    if not isinstance(spec, dict):
        raise RunError(f"cannot read {path}: not a JSON object")
    return {"iaf_transformer": "affine", "anneal_steps": 0, **spec}


def vae_from_spec(spec: dict, info: DataInfo) -> VAE:
    """The (untrained) VAE that a run's ``vae.json`` (:func:`read_spec`) describes, on ``info``'s
    images."""
    return VAE(math.prod(info.shape), spec["latent"], spec["posterior"], spec["length"],
               spec["hidden"], spec["flow_hidden"], spec["iaf_transformer"])


def check_image_data(data: TrainingData) -> None:
    info = data.info
    if info.kind != "image" or not info.num_levels:
        raise ValueError(f"a VAE needs an image data set of discrete pixels; {info.name} is "
                         f"{info.kind} data")


def train_vae(cfg: Config, run_dir: str | Path, *, posterior: str = "gaussian", length: int = 1,
              latent: int = 40, hidden: int = 400, flow_hidden: int = 128, iw_samples: int = 5000,
              iaf_transformer: str = "affine", anneal_steps: int = 0, resume: bool = False,
              overrides: dict | None = None, data: TrainingData | None = None, **seams) -> dict:
    """Train (or resume) a VAE with a ``posterior`` flow of ``length`` layers on the image data
    set ``cfg.data`` (or ``data``) through the :class:`~realnvp.training.Trainer`; returns the
    final evaluation (``neg_elbo``, ``nll_iw`` over ``iw_samples`` draws per test image).

    ``resume=True`` reads the VAE's arguments back from ``vae.json`` and the configuration
    from the run (only ``overrides`` are taken from the call). ``seams``: the trainer's other
    keyword arguments (``max_steps``, ``time_budget``, ``quiet``, ``log``, ...). Bad arguments
    (unknown posterior, ``length < 1``, ``anneal_steps < 0``, a data set that is not images) are
    ``ValueError``s.
    """
    from ..runs import read_run_files
    from .trainer import Trainer

    spec = dict(posterior=posterior, length=length, latent=latent, hidden=hidden,
                flow_hidden=flow_hidden, iw_samples=iw_samples, iaf_transformer=iaf_transformer,
                anneal_steps=anneal_steps)
    if resume:
        spec = read_spec(run_dir)
        _, saved, _ = read_run_files(run_dir)
        cfg = saved.replace(**(overrides or {}))
    check_posterior(spec["posterior"], spec["length"], spec["latent"], spec["iaf_transformer"])
    data = data or load_training_data(cfg)
    check_image_data(data)
    objective = NegativeELBO(iw_samples=spec["iw_samples"], anneal_steps=spec["anneal_steps"])

    def model(cfg_: Config, info: DataInfo) -> VAE:
        return vae_from_spec(spec, info)

    class _VAETrainer(Trainer):
        def setup(self):
            ctx = super().setup()
            if ctx.main and not resume:
                write_spec(self.run_dir, spec)
            return ctx

    trainer = _VAETrainer(cfg, run_dir, resume, overrides, data=data, objective=objective,
                          model=model, **seams)
    return trainer.run()


def summary(result: dict) -> str:
    """One line of a VAE run's final evaluation."""
    line = f"test -ELBO {result['neg_elbo']:.3f} ± {result['neg_elbo_stderr']:.3f} nats"
    if "nll_iw" in result:
        line += f", -log p(x) ≈ {result['nll_iw']:.3f} nats (IW, S={result['iw_samples']})"
    return line + f" per image over {result['num_images']} images"
