"""Training, top to bottom: data, model, Adam with the paper's settings, one checkpoint per epoch.

Reproducibility: every epoch starts by seeding torch, numpy and Python from ``(seed, epoch)`` and
shuffles with its own generator, so an epoch depends only on the seed and on the state saved at
the end of the previous one. ``--resume`` therefore continues a run so that its metrics equal
those of an uninterrupted run with the same seed on the same machine.

Faults: a step whose loss or gradient is not finite is skipped (parameters, optimizer moments
and batch-norm statistics untouched) and logged; after ``max_bad_steps`` in a row the run rolls
back to the last checkpoint and halves the learning rate. A checkpoint with non-finite values is
never written.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint, distributed
from .bijectors import BatchNorm, bits_per_dim
from .config import Config, ConfigError
from .data import load_dataset
from .evaluate import evaluate, histogram_baseline
from .precision import autocast
from .runs import RunError, build_model, load_state, model_input, read_run_files, to_pixels
from .viz import image_grid, samples_and_density, save

METRICS = ["epoch", "step", "train_bpd", "test_bpd", "lr", "skipped_steps", "seconds"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global RNG users and libraries draw from
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**63


class EMA:
    """Exponential moving average of the parameters, for evaluation and sampling.

    Batch-norm running statistics belong to the weights they were gathered with, so those of the
    training model do not fit the averaged weights; :meth:`calibrate` re-estimates them for the
    averaged model on training batches before it is evaluated.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """Running statistics of the averaged model = plain averages over ``batches`` (model
        inputs), as with momentum ``1/(i+1)`` on the i-th batch."""
        norms = [m for m in self.model.modules()
                 if isinstance(m, BatchNorm | torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        self.model.train()
        try:
            for i, y in enumerate(batches):
                for m in norms:
                    m.momentum = 1.0 / (i + 1)
                self.model.log_prob(y)
        finally:
            for m, mom in zip(norms, saved, strict=True):
                m.momentum = mom
            self.model.eval()


@dataclass
class State:
    epoch: int = 0  # last completed epoch
    step: int = 0
    best_bpd: float = math.inf
    lr_scale: float = 1.0  # halved at every rollback
    skipped_steps: int = 0


def calibration_batches(dataset, info, cfg, device, num_batches: int = 8):
    """Model inputs from the first training examples (fixed, so calibration is reproducible)."""
    n = min(len(dataset), cfg.batch_size * num_batches)
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
        x = torch.stack([dataset[i] for i in range(start, start + cfg.batch_size)])
        yield model_input(x.to(device), info)[0]


def _train_loss(model, x, info, cfg, device, reg_params, shard=(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, mean train bits/dim) of a batch; the loss adds the paper's L2 term."""
    y, _ = model_input(x, info, shard=shard)
    with autocast(device, cfg.precision):
        log_p = model(y) if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else model.log_prob(y)
    bpd = bits_per_dim(log_p, info.dim, info.num_levels).mean()
    l2 = sum(p.pow(2).sum() for p in reg_params) if cfg.l2 else 0.0
    return bpd + cfg.l2 * l2, bpd.detach()


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite from the very start)."""


def _gradient_step(net, model, optimizer, x, info, cfg, device, reg_params, dist
                   ) -> tuple[bool, torch.Tensor]:
    """Forward, backward and gradient clipping for one batch; returns (all finite?, batch bpd).

    When the loss or the gradient is not finite (on any process) the gradients are dropped and
    the batch-norm running statistics this batch moved are put back, so the step leaves no trace.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    loss, bpd = _train_loss(net, x, info, cfg, device, reg_params, shard=(dist.rank, dist.world_size))
    optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
    finite = distributed.all_agree(finite, dist)
    if not finite:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        optimizer.zero_grad(set_to_none=True)
    return finite, bpd


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync it, rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Metrics:
    """``metrics.csv`` (one row per epoch), mirrored to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, last_epoch: int, enabled: bool):
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = []
        if self.path.exists():  # keep only complete rows up to the checkpoint we resume from
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if None not in row.values() and int(row["epoch"]) <= last_epoch:
                            rows.append(row)
                    except (TypeError, ValueError):
                        pass
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, METRICS)
        w.writeheader()
        w.writerows(rows)
        _write_atomically(self.path, text.getvalue())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRICS).writerow(row)
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for key in ("train_bpd", "test_bpd", "lr"):
                self.tb.add_scalar(key, row[key], row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def save_pictures(model, info, cfg, path: Path, reference: torch.Tensor | None = None) -> None:
    """A sample grid (images) or samples beside the density (2-D data)."""
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    device = next(model.parameters()).device
    z = torch.randn(cfg.num_samples, model.num_dims, generator=g).to(device) * cfg.sample_temperature
    model.eval()
    with torch.no_grad():
        samples = model.decode(z)
    if info.kind == "image":
        save(image_grid(to_pixels(samples.cpu(), info)), path)
    elif info.dim == 2:
        save(samples_and_density(model, samples, reference), path)


def _tensors_and_meta(model, optimizer, ema, state: State) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    opt_tensors, opt_meta = checkpoint.optimizer_to_tensors(optimizer)
    rng_tensors, rng_meta = checkpoint.rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    meta = {"state": state.__dict__, "optimizer": opt_meta, "rng": rng_meta,
            "torch": torch.__version__, "time": time.time()}
    return tensors, meta


def _restore(ckpt_file: Path, model, optimizer, ema, log) -> State:
    tensors, meta, source = checkpoint.load_with_fallback(ckpt_file, warn=log)
    load_state(model, tensors, "model.", source)
    if ema is not None:
        load_state(ema.model, tensors, "ema." if any(k.startswith("ema.") for k in tensors)
                   else "model.", source)
    checkpoint.optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    checkpoint.set_rng_state(tensors, meta["rng"])
    return State(**meta["state"])


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, overrides: dict) -> tuple[Config, bool]:
    """Validate (and for a new run, create) the run directory; returns the config to use."""
    if resume:
        _, saved, _ = read_run_files(run_dir)
        allowed = {"epochs", "device", "num_workers", "eval_batch_size", "threads"}
        ignored = sorted(set(overrides) - allowed - {"seed"})
        if ignored:
            raise ConfigError("--resume continues the saved configuration; cannot change "
                              + ", ".join(ignored))
        if "seed" in overrides and overrides["seed"] != saved.seed:
            raise ConfigError("--resume cannot change --seed (the run's numbers depend on it)")
        return saved.replace(**{k: v for k, v in overrides.items() if k in allowed}), True
    leftovers = {"data.json", "data.json.tmp", "config.json.tmp"}  # of a set-up cut short
    if run_dir.exists() and any(p.name not in leftovers for p in run_dir.iterdir()):
        if (run_dir / "config.json").exists():
            raise RunError(f"{run_dir} already holds a run: add --resume to continue it, "
                           "or choose another --out")
        raise RunError(f"{run_dir} exists and is not empty; choose another --out")
    return cfg, False


def train(cfg: Config, run_dir: str | Path, resume: bool = False, overrides: dict | None = None,
          quiet: bool = False, log=print) -> dict:
    """Train (or resume) a run in ``run_dir``; returns the final evaluation (``eval.json``)."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    dist = distributed.setup()
    cfg, resume = prepare_run_dir(run_dir, cfg, resume, overrides or {})
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    main = dist.rank == 0
    say = log if main else (lambda *a, **k: None)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    extra = {"image_size": cfg.image_size} if cfg.image_size else {}
    train_set, info = load_dataset(cfg.data, "train", cfg.data_dir, download=cfg.download and main,
                                   seed=cfg.seed, **extra)
    test_set, _ = load_dataset(cfg.data, "test", cfg.data_dir, seed=cfg.seed, augment=False, **extra)
    if len(train_set) < cfg.batch_size * dist.world_size:
        raise ConfigError(f"the training split has {len(train_set)} examples, fewer than one batch "
                          f"({cfg.batch_size} x {dist.world_size} processes)")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info).to(device)
    reg_params = model.regularized_parameters()
    # fused: one kernel for every parameter instead of a Python loop over ~100 tensors (a few
    # per cent of a small model's step; see BENCHMARKS.md); CPU and CUDA have it
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 fused=device.type in ("cpu", "cuda"))
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    ckpt_dir = run_dir / "checkpoints"
    state = State()
    if resume:
        state = _restore(ckpt_dir / "last.safetensors", model, optimizer, ema, say) \
            if (ckpt_dir / "last.safetensors").exists() or (ckpt_dir / "last.safetensors.prev").exists() \
            else State()
        say(f"resuming {run_dir} after epoch {state.epoch} (step {state.step})")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(run_dir / "data.json", json.dumps(info.to_dict(), indent=2) + "\n")
        _write_atomically(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    net = distributed.wrap(model, dist)
    metrics = Metrics(run_dir, state.epoch, enabled=main)
    say(f"{info.name}: {len(train_set)} train / {len(test_set)} test, shape {info.shape}; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; device {device}"
        + (f" x {dist.world_size} processes" if dist.enabled else ""))
    reference = torch.stack([test_set[i] for i in range(min(2000, len(test_set)))]) \
        if info.kind == "vector" and info.dim == 2 else None

    def checkpoint_now(best: bool) -> None:
        if not main:
            return
        tensors, meta = _tensors_and_meta(model, optimizer, ema, state)
        if best:  # before last: a crash in between redoes the epoch, which rewrites best
            checkpoint.save(ckpt_dir / "best.safetensors", tensors, meta)
        checkpoint.save(ckpt_dir / "last.safetensors", tensors, meta)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.time()
        seed_everything(epoch_seed(cfg.seed, epoch))
        loader = DataLoader(train_set, batch_size=cfg.batch_size, drop_last=True,
                            num_workers=cfg.num_workers,
                            **distributed.loader_kwargs(train_set, dist, epoch_seed(cfg.seed, epoch)))
        model.train()
        total, count, bad_in_row = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=quiet or not main,
                   leave=False, dynamic_ncols=True)
        for x in bar:
            lr = cfg.lr * state.lr_scale * min(1.0, (state.step + 1) / max(cfg.warmup_steps, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            finite, bpd = _gradient_step(net, model, optimizer, x.to(device), info, cfg, device,
                                         reg_params, dist)
            if not finite:
                state.skipped_steps += 1
                bad_in_row += 1
                say(f"warning: non-finite loss or gradient at step {state.step}; step skipped")
                if bad_in_row >= cfg.max_bad_steps:
                    if not (ckpt_dir / "last.safetensors").exists():
                        raise TrainingError(f"{bad_in_row} non-finite steps in a row before the first "
                                            "checkpoint; lower --lr or check the data")
                    lr_scale, skipped = state.lr_scale / 2, state.skipped_steps
                    state = _restore(ckpt_dir / "last.safetensors", model, optimizer, ema, say)
                    state.lr_scale, state.skipped_steps = lr_scale, skipped
                    bad_in_row, total, count = 0, 0.0, 0  # the epoch's steps so far were undone
                    say(f"rolled back to epoch {state.epoch}; learning rate now {cfg.lr * lr_scale:.3g}")
                continue
            optimizer.step()
            if ema is not None:
                ema.update(model)
            state.step += 1
            bad_in_row = 0
            total += distributed.average(bpd, dist)
            count += 1
            bar.set_postfix(bpd=f"{bpd.item():.3f}")
        bar.close()

        if ema is not None:
            ema.calibrate(calibration_batches(train_set, info, cfg, device))
        eval_model = ema.model if ema is not None else model
        test = evaluate(eval_model, test_set, info, cfg.eval_batch_size, 1, cfg.precision) if main else {}
        state.epoch = epoch
        row = {"epoch": epoch, "step": state.step,
               "train_bpd": f"{total / max(count, 1):.6f}" if count else "nan",
               "test_bpd": f"{test.get('bits_per_dim', math.nan):.6f}",
               "lr": f"{optimizer.param_groups[0]['lr']:.6g}", "skipped_steps": state.skipped_steps,
               "seconds": f"{time.time() - t0:.2f}"}
        improved = main and test["bits_per_dim"] < state.best_bpd
        if improved:
            state.best_bpd = test["bits_per_dim"]
        metrics.write(row)
        if main and cfg.sample_every and (epoch % cfg.sample_every == 0 or epoch == cfg.epochs):
            save_pictures(eval_model, info, cfg, run_dir / "samples" / f"epoch_{epoch:04d}.png", reference)
        checkpoint_now(improved)
        distributed.barrier(dist)
        say(f"epoch {epoch}: train {row['train_bpd']} test {row['test_bpd']} bits/dim "
            f"({row['seconds']} s)")
    metrics.close()

    result = {}
    if main:
        eval_model = ema.model if ema is not None else model
        seed_everything(epoch_seed(cfg.seed, 0))
        result = evaluate(eval_model, test_set, info, cfg.eval_batch_size, cfg.eval_dequant_samples,
                          cfg.precision, progress=not quiet)
        baseline = histogram_baseline(train_set, test_set, info)
        if baseline is not None:
            result["histogram_baseline_bpd"] = baseline
        result.update({"split": "test", "epochs": state.epoch, "steps": state.step,
                       "best_test_bpd_during_training": state.best_bpd, "weights": "ema" if ema else "last"})
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        if info.kind == "image" or info.dim == 2:
            save_pictures(eval_model, info, cfg, run_dir / "samples.png", reference)
    del net  # the DDP wrapper holds the process group; see distributed.teardown
    distributed.teardown(dist)
    return result


