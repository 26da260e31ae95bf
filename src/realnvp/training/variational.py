"""Reverse-KL variational inference through the training loop: fit a flow ``q`` to an
unnormalised target ``p̃`` by minimising ``E_q[log q(z) − β·log p̃(z)]`` with reparametrised
gradients (Rezende & Mohamed, 2015).

Nothing is read from a data set: a "batch" is a sample size. :func:`sample_steps` gives the
trainer a :class:`~realnvp.training.TrainingData` whose training split is only
``steps_per_epoch × batch_size`` indices (so the loop counts its steps, checkpoints, resumes and
stops part-way as for data), and :class:`ReverseKL` draws ``cfg.batch_size`` fresh samples of ``q``
at every step. The trainer's ``model`` seam builds the posterior.

- Annealing (R&M): ``β = min(1, β₀ + step/anneal_steps)`` with ``β₀ = 0.01``; ``anneal_steps = 0``:
  ``β = 1`` throughout.
- ``particles = S > 1``: the importance-weighted bound over groups of ``S`` samples is maximised
  instead of the ELBO (``cfg.batch_size`` must be a multiple of ``S``); with annealing its log
  weights are ``β·log p̃ − log q``.
- Reported: ``train_neg_elbo`` (the un-annealed ``E_q[log q − log p̃]`` of the step's samples),
  and after every epoch ``valid_neg_elbo`` from ``eval_samples`` fresh samples; ``eval.json`` has
  the negative ELBO, the importance-weighted bound, the effective sample size and, where
  ``log Z`` is known (in closed form, or by quadrature for 2-D targets), ``kl`` = KL(q‖p).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import atomic
from ..config import Config
from ..data import DataInfo
from ..models import Flow
from ..runs import RunError, read_run_files
from ..vi.bounds import annealed_beta, elbo, estimate, importance_weighted_bound, log_weights
from ..vi.quadrature import log_normaliser, q_beside_target
from ..vi.targets import checked
from ..viz import save
from .data import TrainingData
from .objectives import Objective


class Indices(Dataset):
    """``0 … n − 1``: the "examples" of a data-free run (one epoch is ``n // batch_size`` steps)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


def sample_steps(name: str, dim: int, steps_per_epoch: int, batch_size: int) -> TrainingData:
    """The :class:`TrainingData` of a data-free run: ``steps_per_epoch`` batches of ``batch_size``
    indices per epoch; the validation and test "splits" are empty index sets (the objective
    draws its own samples to evaluate)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    info = DataInfo(name=name, kind="vector", shape=(dim,), num_levels=None)
    return TrainingData(info, Indices(steps_per_epoch * batch_size), Indices(0), Indices(0))


class ReverseKL(Objective):
    """``E_q[log q − β·log p̃]`` (or minus the importance-weighted bound with ``particles`` > 1)
    against ``log_target`` (any callable ``(B, D) -> (B,)``, checked by
    :func:`~realnvp.vi.targets.checked`).

    Args:
        log_target: the unnormalised target log-density.
        anneal_steps: steps over which β rises from ``beta0`` to 1 (0: no annealing).
        particles: samples per importance-weighted bound in training (1: the ELBO).
        eval_samples: fresh samples of each evaluation after an epoch (the final one takes 4×).
        eval_particles: samples per importance-weighted bound in the final evaluation.
        log_z: the target's log normaliser, if known; else the target's ``log_z`` attribute, or for
            a 2-D target with ``bounds``, quadrature on a ``quadrature_size``² grid.
    """

    metric = "neg_elbo"
    score_key = "neg_elbo"
    unit = "nats"

    def __init__(self, log_target, anneal_steps: int = 0, beta0: float = 0.01, particles: int = 1,
                 eval_samples: int = 4096, eval_particles: int = 64, log_z: float | None = None,
                 quadrature_size: int = 1200):
        super().__init__()
        if anneal_steps < 0 or particles < 1 or eval_samples < 1 or eval_particles < 1:
            raise ValueError("anneal_steps must be >= 0 and particles, eval_samples, eval_particles >= 1")
        self.target = checked(log_target)
        self.anneal_steps, self.beta0, self.particles = anneal_steps, beta0, particles
        self.eval_samples, self.eval_particles = eval_samples, eval_particles
        self.quadrature_size = quadrature_size
        self.log_z = log_z if log_z is not None else getattr(self.target, "log_z", None)

    def beta(self, step: int) -> float:
        """The target's weight at optimizer step ``step``."""
        return annealed_beta(step, self.anneal_steps, self.beta0)

    def setup(self, ctx) -> None:
        self.target.to(ctx.device)
        if ctx.cfg.batch_size % self.particles:
            raise ValueError(f"batch_size {ctx.cfg.batch_size} is not a multiple of particles "
                             f"{self.particles}")
        bounds = getattr(self.target, "bounds", None)
        if self.log_z is None and bounds is not None and ctx.data.info.dim == 2:
            self.log_z = log_normaliser(self.target, bounds, self.quadrature_size)

    def loss(self, ctx, batch) -> tuple[Tensor, Tensor]:
        n = len(batch)
        q = ctx.net if hasattr(ctx.net, "rsample_and_log_prob") else ctx.model
        _, log_q, log_p = log_weights(q, self.target, n)
        beta = self.beta(ctx.state.step)
        if self.particles > 1:
            loss = -importance_weighted_bound(beta * log_p, log_q, self.particles).mean()
        else:
            loss = -elbo(log_p, log_q, beta)
        return loss, (log_q - log_p).mean().detach()

    def evaluate(self, ctx, model: Flow, dataset, final: bool, progress: bool = False) -> dict:
        g = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed + (7 if final else 0))
        n = self.eval_samples * (4 if final else 1)
        particles = self.eval_particles if final else 1
        n = max(particles, n // particles * particles)
        return estimate(model, self.target, n, samples=particles, log_z=self.log_z, generator=g)

    def pictures(self, ctx, model: Flow, path: Path) -> bool:
        bounds = getattr(self.target, "bounds", None)
        if bounds is None or ctx.data.info.dim != 2:
            return False
        g = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed)
        save(q_beside_target(model, self.target, bounds, generator=g), path)
        return True


#: The file of a fit's run directory that says what is fitted, with what (read by ``--resume``).
FIT_FILE = "fit.json"


def posterior_from_spec(spec: dict, dim: int) -> Flow:
    """The posterior flow a :func:`fit` run's ``fit.json`` describes, for ``dim`` dimensions."""
    from ..vi.posteriors import build_posterior

    return build_posterior(spec["flow"], dim, spec["length"], spec["hidden"])


def read_fit_spec(run_dir: str | Path) -> dict:
    """The ``fit.json`` of a run that :func:`fit` wrote."""
    path = Path(run_dir) / FIT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run of realnvp fit (no {FIT_FILE})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def _dimension(given: int | None, target_dim: int | None) -> int:
    """The features of ``z`` for :func:`fit`: ``given``, else the target's, else 2."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"dim must be an integer >= 1, got {given!r}")
        if target_dim is not None and given != target_dim:
            raise ValueError(f"dim={given}, but the target is a density on {target_dim} features")
        return given
    return target_dim or 2


def fit(cfg: Config, run_dir: str | Path, log_target=None, *, target: str | None = None,
        dim: int | None = None, flow: str = "planar", length: int = 8, hidden: int = 64,
        steps_per_epoch: int = 500, anneal_steps: int = 0, particles: int = 1, eval_samples: int = 4096,
        eval_particles: int = 64, resume: bool = False, overrides: dict | None = None,
        **seams) -> dict:
    """Fit a posterior (:func:`~realnvp.vi.posteriors.build_posterior` ``flow`` of ``length``
    layers) to ``log_target`` (a callable) or the built-in ``target`` by reverse KL, through the
    :class:`~realnvp.training.Trainer`: ``cfg.epochs`` epochs of ``steps_per_epoch`` steps of
    ``cfg.batch_size`` samples, with checkpoints, ``metrics.csv``, pictures of ``q`` beside the
    target, ``eval.json``, and resume. Returns the final evaluation.

    ``dim`` is the number of features of ``z``: by default the target's ``dim`` attribute (the
    built-in targets have one), else 2, so a plain function of ``(B, D)`` samples with ``D ≠ 2``
    needs it; a ``dim`` that contradicts the target's is a ``ValueError``. For a built-in
    ``target`` it chooses the funnel's dimension (:func:`~realnvp.vi.targets.get_target`).

    The run directory also holds ``fit.json`` (these arguments); ``resume=True`` reads it back
    (then only ``log_target``, for a callable target, and ``overrides`` are taken from the
    call). ``seams``: the trainer's other keyword arguments (``max_steps``, ``time_budget``,
    ``quiet``, ``log``, ...).
    """
    from ..vi.targets import get_target
    from .trainer import Trainer

    spec = dict(target=target, dim=dim, flow=flow, length=length, hidden=hidden,
                steps_per_epoch=steps_per_epoch, anneal_steps=anneal_steps, particles=particles,
                eval_samples=eval_samples, eval_particles=eval_particles)
    if resume:
        spec = {"dim": None, **read_fit_spec(run_dir)}  # runs written before dim was a choice
    if log_target is None:
        if spec["target"] is None:
            raise ValueError("give a log_target callable or the name of a built-in target")
        log_target = get_target(spec["target"], spec["dim"])
    target_fn = checked(log_target)
    dim = _dimension(spec["dim"], getattr(target_fn, "dim", None))
    name = f"target:{spec['target'] or getattr(target_fn, 'name', 'callable')}"
    objective = ReverseKL(target_fn, anneal_steps=spec["anneal_steps"], particles=spec["particles"],
                          eval_samples=spec["eval_samples"], eval_particles=spec["eval_particles"])
    data = sample_steps(name, dim, spec["steps_per_epoch"], cfg.batch_size)

    def posterior(cfg_: Config, info: DataInfo) -> Flow:
        return posterior_from_spec(spec, info.dim)

    class _FitTrainer(Trainer):
        def setup(self):
            if resume:  # the batch size of the saved configuration counts the steps
                _, saved, _ = read_run_files(self.run_dir)
                self.data = sample_steps(name, dim, spec["steps_per_epoch"], saved.batch_size)
            ctx = super().setup()
            if ctx.main and not resume:
                atomic.write_text(Path(self.run_dir) / FIT_FILE, json.dumps(spec, indent=2) + "\n")
            return ctx

    cfg = cfg.replace(data=name) if not resume else cfg
    trainer = _FitTrainer(cfg, run_dir, resume, overrides, data=data, objective=objective,
                          model=posterior, **seams)
    return trainer.run()


def summary(result: dict) -> str:
    """One line of an evaluation of :class:`ReverseKL`."""
    line = f"-ELBO {result['neg_elbo']:.4f} ± {result['neg_elbo_stderr']:.4f} nats"
    if "iw_bound" in result:
        line += f", IW bound (S={result['iw_samples']}) {result['iw_bound']:.4f}"
    if "kl" in result:
        line += f", KL(q‖p) {result['kl']:.4f} nats (log Z {result['log_z']:.4f})"
    line += f", ESS {100 * result['ess']:.1f}% over {result['num_samples']} samples"
    return line if math.isfinite(result["neg_elbo"]) else line + " (not finite)"


__all__ = ["FIT_FILE", "Indices", "ReverseKL", "fit", "posterior_from_spec", "read_fit_spec",
           "sample_steps", "summary"]
