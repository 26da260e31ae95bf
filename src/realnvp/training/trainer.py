"""The training loop, top to bottom: set up, epochs of steps, evaluation, checkpoints, finish.

Reproducibility: every epoch starts by seeding torch, numpy and Python from ``(seed, epoch)`` and
shuffles with its own generator, so an epoch depends only on the seed and on the state saved at
the end of the previous one. ``--resume`` therefore continues a run so that its metrics equal
those of an uninterrupted run with the same seed on the same machine. A run stopped part-way
through an epoch (``max_steps``, ``time_budget``) saves its position in the epoch and the RNG
state with the checkpoint, and resumes at the next batch of the same order.

Faults: a step whose loss or gradient is not finite is skipped (parameters, optimizer moments
and batch-norm statistics untouched) and logged; after ``max_bad_steps`` in a row the run rolls
back to the last checkpoint and halves the learning rate. A checkpoint with non-finite values is
never written.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import atomic, checkpoint, distributed
from ..config import Config, ConfigError
from ..models.build import build_model
from ..runtime import resolve_device, seed_everything
from . import checkpoints, rundir
from .context import Context
from .data import TrainingData, epoch_seed, load_training_data
from .ema import EMA
from .faults import Faults
from .metrics import Metrics
from .objectives import MaximumLikelihood, Objective, selection_score
from .schedule import learning_rate
from .state import State
from .step import gradient_step


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite from the very start)."""


def adam(params, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam with ``cfg``'s learning rate, betas and epsilon.

    ``fused``: one kernel for every parameter instead of a Python loop over ~100 tensors (a few
    per cent of a small model's step; see BENCHMARKS.md); CPU and CUDA have it.
    """
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                            fused=device.type in ("cpu", "cuda"))


class Trainer:
    """Trains (or resumes) the run in ``run_dir``; :meth:`run` returns the final evaluation.

    Seams, all optional: ``data`` (a :class:`TrainingData`; default: the data set ``cfg`` names),
    ``objective`` (default :class:`MaximumLikelihood`), ``model(cfg, data_info) -> Flow`` (default
    :func:`~realnvp.models.build.build_model`; e.g. a variational posterior for a data-free
    objective, whose ``data`` only counts steps), ``optimizer(params, cfg, device)``
    (default :func:`adam`), ``clock`` (seconds, for the ``seconds`` column and the time budget),
    ``faults`` (:class:`Faults` hooks). ``max_steps`` and ``time_budget`` (seconds of training,
    from the start of the first epoch) stop the run at a step boundary: it checkpoints,
    evaluates and can be resumed; neither is part of the saved configuration. ``overwrite``:
    start again in a directory whose run stopped before its first checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False,
                 overrides: dict | None = None, *, data: TrainingData | None = None,
                 objective: Objective | None = None, optimizer: Callable = adam,
                 model: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, faults: Faults | None = None,
                 max_steps: int | None = None, time_budget: float | None = None,
                 overwrite: bool = False, quiet: bool = False, log: Callable[..., None] = print):
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.overrides = overrides or {}
        self.data, self.objective, self.make_optimizer = data, objective, optimizer
        self.build_model = model or build_model
        self.clock, self.faults = clock, faults or Faults()
        self.max_steps, self.time_budget = max_steps, time_budget
        self.quiet, self.log, self.overwrite = quiet, log, overwrite
        self.stopped: str | None = None  # why the run ended early, if it did
        self.lock: rundir.RunLock | None = None

    # --------------------------------------------------------------------------------- set up

    def setup(self) -> Context:
        """Processes, run directory, data, model, optimizer, moving average; resume if asked."""
        validated = self.data.valid is not None if self.data is not None else bool(self.cfg.valid_size)
        if self.cfg.patience and not validated:
            raise ConfigError("patience needs a validation split (valid_size > 0): early stopping "
                              "never looks at the test split")
        dist = distributed.setup()
        if dist.rank == 0:  # the one writer
            self.lock = rundir.RunLock(self.run_dir).acquire()
        cfg, resume = rundir.prepare_run_dir(self.run_dir, self.cfg, self.resume, self.overrides,
                                             self.overwrite)
        device = dist.device if dist.enabled else resolve_device(cfg.device)
        main = dist.rank == 0
        say = self.log if main else (lambda *a, **k: None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        data = self.data or load_training_data(cfg, download=cfg.download and main)
        data.check(cfg.batch_size, dist.world_size)

        torch.manual_seed(cfg.seed)
        model = self.build_model(cfg, data.info).to(device)
        objective = self.objective or MaximumLikelihood()
        objective.build(cfg, data.info)
        objective = objective.to(device)
        optimizer = self.make_optimizer(
            [*model.parameters(), *objective.parameters()], cfg, device)
        ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
        ctx = Context(cfg, self.run_dir, dist, device, data, model, objective, optimizer, ema,
                      State(), self.faults, say)
        objective.setup(ctx)
        if resume:
            last = ctx.checkpoint_dir / "last.safetensors"
            if checkpoint.exists(last):
                ctx.state = checkpoints.restore(ctx, last)
            st = ctx.state
            where = (f"part-way through epoch {st.epoch + 1} (batch {st.batches_done})"
                     if st.batches_done else f"after epoch {st.epoch}")
            say(f"resuming {self.run_dir} {where} (step {st.step})")
        elif main:
            rundir.describe(self.run_dir, cfg, data.info)
        ctx.net = distributed.wrap(model, dist)
        sel, m = data.selection_name, objective.metric
        self.columns = ["epoch", "step", f"train_{m}", f"{sel}_{m}", "lr", "skipped_steps", "seconds"]
        # models solved by an ODE solver (FFJORD) report their function evaluations: the mean
        # per training step goes to its own column
        self.reports_nfe = hasattr(model, "nfe")
        if self.reports_nfe:
            self.columns.append("nfe")
        self.metrics = Metrics(self.run_dir, self.columns, ctx.state.epoch, enabled=main,
                               plotted=(self.columns[2], self.columns[3], "lr"))
        say(f"{data.info.name}: {len(data.train)} train / {len(data.selection)} {sel}, shape "
            f"{data.info.shape}; {sum(p.numel() for p in model.parameters()):,} parameters; "
            f"device {device}" + (f" x {dist.world_size} processes" if dist.enabled else ""))
        return ctx

    # ------------------------------------------------------------------------------ the loop

    def run(self) -> dict:
        try:
            ctx = self.setup()
        except BaseException:
            self._unlock()
            raise
        self.started = self.clock()
        try:
            for epoch in range(ctx.state.epoch + 1, ctx.cfg.epochs + 1):
                self.stopped = self._limit_reached(ctx)
                if self.stopped or not self.epoch(ctx, epoch):
                    break
            self.metrics.close()
            return self.finish(ctx)
        finally:
            ctx.net = None  # the DDP wrapper holds the process group; see distributed.teardown
            distributed.teardown(ctx.dist)
            self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def epoch(self, ctx: Context, epoch: int) -> bool:
        """Train one epoch (or its rest, after a stop part-way); whether it was completed."""
        from tqdm import tqdm

        cfg, state = ctx.cfg, ctx.state
        t0 = self.clock() - state.seconds
        if state.batches_done == 0:  # a resumed part-way epoch has its RNG state from the checkpoint
            seed_everything(epoch_seed(cfg.seed, epoch))
        loader = ctx.data.loader(epoch_seed(cfg.seed, epoch), cfg.batch_size, ctx.dist,
                                 cfg.num_workers, skip_batches=state.batches_done)
        remaining = len(loader)
        ctx.model.train()
        ctx.objective.train()
        # no bar where stderr is a file: it would redraw every step on one line of the log (the
        # epoch lines say what happened)
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=self.quiet or not ctx.main or not sys.stderr.isatty())
        for batch in bar:
            self.step(ctx, batch, bar)
            state = ctx.state  # a rollback replaces it
            state.batches_done += 1
            remaining -= 1
            self.stopped = self._limit_reached(ctx) if remaining else None
            if self.stopped:
                bar.close()
                state.seconds = self.clock() - t0
                checkpoints.save(ctx, best=False)
                return False
        bar.close()
        self.end_epoch(ctx, epoch, self.clock() - t0)
        return True

    def step(self, ctx: Context, batch, bar) -> None:
        """One batch: a gradient step, or a skipped one (and a rollback after too many)."""
        cfg, state = ctx.cfg, ctx.state
        total = cfg.epochs * ctx.data.steps_per_epoch(cfg.batch_size, ctx.dist)
        lr = learning_rate(cfg, state.step, total) * state.lr_scale
        for group in ctx.optimizer.param_groups:
            group["lr"] = lr
        ctx.faults.before_step(ctx)
        finite, value = gradient_step(ctx, batch)
        if not finite:
            state.skipped_steps += 1
            state.bad_in_row += 1
            ctx.log(f"warning: non-finite loss or gradient at step {state.step}; step skipped")
            if state.bad_in_row >= cfg.max_bad_steps:
                self.roll_back(ctx)
            return
        ctx.optimizer.step()
        if ctx.ema is not None:
            ctx.ema.update(ctx.model)
        state.step += 1
        state.bad_in_row = 0
        state.epoch_total += distributed.average(value, ctx.dist)
        state.epoch_count += 1
        postfix = {ctx.objective.metric: f"{value.item():.3f}"}
        if self.reports_nfe:
            state.epoch_nfe += ctx.model.nfe
            postfix["nfe"] = ctx.model.nfe
        bar.set_postfix(postfix)

    def roll_back(self, ctx: Context) -> None:
        """Back to the last checkpoint with half the learning rate; the epoch goes on from the
        current batch (the steps since the checkpoint were undone)."""
        last = ctx.checkpoint_dir / "last.safetensors"
        state = ctx.state
        if not last.exists():
            raise TrainingError(f"{state.bad_in_row} non-finite steps in a row before the first "
                                "checkpoint; lower --lr or check the data")
        lr_scale, skipped, position = state.lr_scale / 2, state.skipped_steps, state.batches_done
        ctx.state = checkpoints.restore(ctx, last)
        ctx.state.lr_scale, ctx.state.skipped_steps = lr_scale, skipped
        ctx.state.batches_done, ctx.state.bad_in_row = position, 0
        ctx.log(f"rolled back to epoch {ctx.state.epoch}; learning rate now {ctx.cfg.lr * lr_scale:.3g}")

    def _limit_reached(self, ctx: Context) -> str | None:
        patience = ctx.cfg.patience
        if patience and ctx.state.batches_done == 0 and ctx.state.epochs_since_best >= patience:
            return "early_stopping"
        if self.max_steps is not None and ctx.state.step >= self.max_steps:
            return "max_steps"
        if self.time_budget is not None and self.clock() - self.started >= self.time_budget:
            return "time_budget"
        return None

    # -------------------------------------------------------------------- evaluation, outputs

    def end_epoch(self, ctx: Context, epoch: int, seconds: float) -> None:
        """Calibrate the moving average, evaluate, write the metrics row, pictures, checkpoint."""
        cfg, state, objective = ctx.cfg, ctx.state, ctx.objective
        if ctx.ema is not None:
            ctx.ema.calibrate(objective.calibration_inputs(ctx))
        result = objective.evaluate(ctx, ctx.eval_model, ctx.data.selection, final=False) \
            if ctx.main else {}
        total, count, nfe = state.epoch_total, state.epoch_count, state.epoch_nfe
        state.end_epoch(epoch)
        score = selection_score(objective, result)
        row = dict(zip(self.columns, [
            epoch, state.step, f"{total / max(count, 1):.6f}" if count else "nan", f"{score:.6f}",
            f"{ctx.optimizer.param_groups[0]['lr']:.6g}", state.skipped_steps, f"{seconds:.2f}"]
            + ([f"{nfe / max(count, 1):.1f}"] if self.reports_nfe else []),
            strict=True))
        # without a validation split nothing is selected: "best" is the last epoch's weights, and
        # the test split is only monitored
        improved = ctx.main and (ctx.data.valid is None or score < state.best_score)
        if improved:
            state.best_score = score
        state.epochs_since_best = 0 if improved else state.epochs_since_best + 1
        self.metrics.write(row)
        if ctx.main and cfg.sample_every and (epoch % cfg.sample_every == 0 or epoch == cfg.epochs):
            objective.pictures(ctx, ctx.eval_model, self.run_dir / "samples" / f"epoch_{epoch:04d}.png")
        checkpoints.save(ctx, best=improved)
        distributed.barrier(ctx.dist)
        ctx.log(f"epoch {epoch}: train {row[self.columns[2]]} {ctx.data.selection_name} "
                f"{row[self.columns[3]]} {objective.unit} ({row['seconds']} s)")

    def finish(self, ctx: Context) -> dict:
        """The end-of-run evaluation on the test split (``eval.json``) and a sample picture, of
        the selected weights: the best checkpoint's, when a validation split selects it, else
        the last (or their moving average); rank 0 only."""
        if not ctx.main:
            return {}
        if self.stopped and ctx.ema is not None and ctx.state.batches_done:
            ctx.ema.calibrate(ctx.objective.calibration_inputs(ctx))  # after the checkpoint
        model, weights, selected = self._selected(ctx)
        seed_everything(epoch_seed(ctx.cfg.seed, 0))
        result = ctx.objective.evaluate(ctx, model, ctx.data.test, final=True, progress=not self.quiet)
        sel, metric = ctx.data.selection_name, ctx.objective.metric
        result.update({"split": "test", "epochs": ctx.state.epoch, "steps": ctx.state.step,
                       "weights": weights})
        if ctx.data.valid is not None and math.isfinite(ctx.state.best_score):  # an epoch was scored
            result[f"best_{sel}_{metric}_during_training"] = ctx.state.best_score
        if selected is not None:
            result["selected_epoch"] = selected
        if self.stopped:
            result["stopped"] = self.stopped
        atomic.write_text(self.run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        ctx.objective.pictures(ctx, model, self.run_dir / "samples.png")
        return result

    def _selected(self, ctx: Context):
        """``(model, weights name, selected epoch)`` to report on."""
        kind = "ema" if ctx.ema is not None else "last"
        best = ctx.checkpoint_dir / "best.safetensors"
        if ctx.data.valid is None or not checkpoint.exists(best):
            return ctx.eval_model, kind, None
        model = copy.deepcopy(ctx.eval_model)
        state = checkpoints.load_weights(ctx, model, best)
        return model.eval(), f"best ({'ema' if ctx.ema is not None else 'model'})", state.epoch


def train(cfg: Config, run_dir: str | Path, resume: bool = False, overrides: dict | None = None,
          quiet: bool = False, log: Callable[..., None] = print, **seams) -> dict:
    """Train (or resume) a run in ``run_dir``; returns the final evaluation (``eval.json``).
    ``seams``: the :class:`Trainer`'s keyword arguments."""
    return Trainer(cfg, run_dir, resume, overrides, quiet=quiet, log=log, **seams).run()


__all__ = ["Trainer", "TrainingError", "adam", "train"]
