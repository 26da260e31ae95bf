"""What training minimises, and how a run measures itself: the objective interface.

The :class:`~realnvp.training.Trainer` owns the loop (steps, faults, EMA, evaluation,
checkpoints); an :class:`Objective` says, for one training batch, which scalar to minimise and
which value to report, and, for a model, how good it is. Objectives for the other flow families
plug in here without touching the loop:

- maximum likelihood of data through the preprocessing (:class:`MaximumLikelihood`, the paper's);
- reverse KL ``E_q[log q(x) − log p̃(x)]`` against an unnormalised log-density, where a "batch"
  is only a sample size and nothing is read from a data set;
- an ELBO with a learned dequantizer ``q(u|x)`` (Flow++), or a VAE's ELBO: trainable modules of
  the objective's own are submodules of it; the trainer optimises them with the model's
  parameters and saves their state in the checkpoints under ``objective.``. (Under DDP such an
  objective must wrap its own modules as the trainer wraps the model.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from .. import distributed
from ..bijectors import bits_per_dim
from ..evaluate import evaluate, evaluate_side_by_side, histogram_baseline, nats_per_example
from ..inputs import batch_parts, class_context, model_input, to_pixels
from ..models import Flow
from ..models.build import build_dequantizer
from ..precision import autocast
from ..viz import image_grid, samples_and_density, save


class Objective(nn.Module):
    """The interface. ``metric`` names the reported value in ``metrics.csv``
    (``train_<metric>``, ``<selection split>_<metric>``); :meth:`evaluate` returns a dict whose
    ``score_key`` entry selects the best checkpoint (lower is better)."""

    metric: str = "loss"
    score_key: str = "loss"
    unit: str = "nats"

    def build(self, cfg, info) -> None:
        """Create the objective's own trainable modules for the run's configuration and data
        (:class:`~realnvp.data.DataInfo`): called before the optimizer is made (and before a
        resumed run's checkpoint is loaded into them)."""

    def setup(self, ctx) -> None:
        """Called once the run's :class:`~realnvp.training.Context` exists, before any step."""

    def loss(self, ctx, batch) -> tuple[Tensor, Tensor]:
        """``(scalar to minimise, detached scalar to report)`` for one training batch, computed
        with ``ctx.net`` (the model, or its DDP wrapper)."""
        raise NotImplementedError

    def evaluate(self, ctx, model: Flow, dataset, final: bool, progress: bool = False) -> dict:
        """Figures of ``model`` on ``dataset`` (the selection split after every epoch, the test
        split at the end); ``final``: the end-of-run evaluation (``eval.json``), which may be
        more thorough than the one after every epoch."""
        raise NotImplementedError

    def calibration_inputs(self, ctx):
        """Model inputs on which :meth:`EMA.calibrate` re-estimates batch statistics."""
        return iter(())

    def pictures(self, ctx, model: Flow, path: Path) -> bool:
        """Draw what the model has learnt to ``path`` (PNG); whether anything was drawn."""
        return False


class MaximumLikelihood(Objective):
    """``−log p(x)`` of data (paper §4.1), plus the paper's L2 penalty.

    Images are dequantized, every preprocessing Jacobian counted, so the figures compare with
    the paper's Table 1: with fresh uniform noise (``cfg.dequantization = "uniform"``, the
    paper's), or with offsets from a learned dequantizer ``q(u|x)`` trained with the model
    (``"variational"``, Flow++ §3.1: :class:`~realnvp.models.dequantization.VariationalDequantizer`,
    kept as this objective's ``dequantizer``, in the checkpoints under ``objective.dequantizer.``).
    The loss is the batch's mean negative bound ``−(log p(y) − log q(u|x))`` in nats per example
    (the NLL for uniform noise, where ``log q = 0``) plus ``cfg.l2 · Σ θ²`` over
    :meth:`Flow.regularized_parameters`, as in the authors' code; progress is reported in
    bits/dim. Evaluation: mean bits/dim with one noise draw after every epoch; at the end of the
    run ``cfg.eval_dequant_samples`` draws and the importance-weighted estimate (and, for a
    learned dequantizer, both again with uniform noise, side by side).
    """

    metric = "bpd"
    score_key = "bits_per_dim"
    unit = "bits/dim"

    def __init__(self):
        super().__init__()
        self.dequantizer: nn.Module | None = None
        self.__dict__["_q"] = None  # what a training step calls: the dequantizer or its DDP wrapper

    def build(self, cfg, info) -> None:
        self.dequantizer = build_dequantizer(cfg, info)

    def setup(self, ctx) -> None:
        self.reg_params = ctx.model.regularized_parameters()
        info = ctx.data.info
        test = ctx.data.test
        self.reference = torch.stack([test[i] for i in range(min(2000, len(test)))]) \
            if info.kind == "vector" and info.dim == 2 and not info.context_features else None
        # not a submodule: the wrapper's parameters are the dequantizer's, saved under its name
        self.__dict__["_q"] = None if self.dequantizer is None \
            else distributed.wrap(self.dequantizer, ctx.dist)

    def loss(self, ctx, batch) -> tuple[Tensor, Tensor]:
        """``(mean negative bound in nats per example + l2·Σθ², mean bits/dim)``: the cost on
        the authors' scale (``real_nvp_multiscale_dataset.py`` minimises the per-image NLL in
        nats plus ``l2_coeff · l2_reg`` and clips that gradient), and the figure people report."""
        cfg, info = ctx.cfg, ctx.data.info
        x, context = batch_parts(batch, info, ctx.device)
        y, log_q = model_input(x.to(ctx.device), info, shard=(ctx.dist.rank, ctx.dist.world_size),
                               dequantizer=self._q)
        if self._q is not None and not bool(torch.isfinite(y).all()):
            # a diverged dequantizer: a non-finite step (dropped, counted), not a refused input
            nan = torch.tensor(math.nan, device=ctx.device)
            return nan, nan
        with autocast(ctx.device, cfg.precision):
            log_p = ctx.net(y) if context is None else ctx.net(y, context)
        bpd = bits_per_dim(log_p if log_q is None else log_p - log_q, info.dim, info.num_levels).mean()
        nll = nats_per_example(bpd, info.dim)  # = mean(−log p(y) + log q) + D ln K: a constant apart
        l2 = sum(p.pow(2).sum() for p in self.reg_params) if cfg.l2 else 0.0
        # a model with regularisers of its own that its forward pass computes (FFJORD's RNODE
        # terms) says so with regularization_loss(); they join the cost, not the reported value
        extra = getattr(ctx.model, "regularization_loss", None)
        return nll + cfg.l2 * l2 + (extra() if extra is not None else 0.0), bpd.detach()

    def evaluate(self, ctx, model: Flow, dataset, final: bool, progress: bool = False) -> dict:
        cfg, data, q = ctx.cfg, ctx.data, self.dequantizer
        if not final:
            return evaluate(model, dataset, data.info, cfg.eval_batch_size, 1, cfg.precision,
                            dequantizer=q)
        return final_evaluation(model, dataset, data, cfg, q, progress)

    def calibration_inputs(self, ctx, num_batches: int = 8):
        """``(model input, context)`` batches from the first training examples (fixed, so
        calibration is reproducible)."""
        train, b = ctx.data.train, ctx.cfg.batch_size
        n = min(len(train), b * num_batches)
        for start in range(0, n - b + 1, b):
            batch = default_collate([train[i] for i in range(start, start + b)])
            x, context = batch_parts(batch, ctx.data.info, ctx.device)
            with torch.no_grad():
                y, _ = model_input(x.to(ctx.device), ctx.data.info, dequantizer=self.dequantizer)
            yield y, context

    def pictures(self, ctx, model: Flow, path: Path) -> bool:
        """A sample grid (images) or samples beside the density (2-D data)."""
        cfg, info = ctx.cfg, ctx.data.info
        if info.kind != "image" and (info.dim != 2 or model.context_features):
            return False  # a density picture of a conditional vector model would need a context
        g = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
        samples = model.sample(cfg.num_samples, cfg.sample_temperature, generator=g,
                               context=class_context(model, cfg.num_samples, ctx.device))
        if info.kind == "image":
            save(image_grid(to_pixels(samples.cpu(), info)), path)
        else:
            save(samples_and_density(model, samples, self.reference), path)
        return True


def final_evaluation(model: Flow, dataset, data, cfg, dequantizer=None, progress: bool = False) -> dict:
    """The end-of-run figures (``eval.json``): the bound over ``cfg.eval_dequant_samples``
    draws and the importance-weighted estimate, with the run's dequantizer and, for a learned
    one, with uniform noise beside them (:func:`~realnvp.evaluate.evaluate_side_by_side`); the
    histogram baseline for data held in memory."""
    result = evaluate_side_by_side(model, dataset, data.info, cfg.eval_batch_size,
                                   cfg.eval_dequant_samples, cfg.precision, progress=progress,
                                   importance_samples=cfg.eval_importance_samples or None,
                                   dequantizer=dequantizer)
    baseline = histogram_baseline(data.train, dataset, data.info)
    if baseline is not None:
        result["histogram_baseline_bpd"] = baseline
    return result


def selection_score(objective: Objective, result: dict) -> float:
    """The value of ``result`` that selects the best checkpoint (``nan`` when absent)."""
    return result.get(objective.score_key, math.nan)
