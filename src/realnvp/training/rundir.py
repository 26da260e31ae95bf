"""A run's directory: checking it before training, and describing the run in it."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from .. import atomic
from ..config import Config, ConfigError
from ..data import DataInfo
from ..runs import RunError, read_run_files

#: What ``--resume`` may change: where and how fast the run goes, and how long it is.
RESUME_OVERRIDES = frozenset({"epochs", "device", "num_workers", "eval_batch_size", "threads"})


#: What a run writes into its directory, besides its checkpoints (``--overwrite`` removes them).
RUN_FILES = ("config.json", "data.json", "metrics.csv", "eval.json", "samples.png", "curves.png",
             "samples", "tensorboard", "fit.json")


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, overrides: dict,
                    overwrite: bool = False) -> tuple[Config, bool]:
    """Validate a run directory; returns ``(config to use, resuming?)``.

    A resumed run continues its saved configuration, with only :data:`RESUME_OVERRIDES` changed
    (``seed`` may be repeated, not changed). A new run needs a missing or empty directory (one
    that holds only what a set-up cut short left behind is fine); with ``overwrite``, also one
    that holds a run that died before its first checkpoint, whose files are then removed.
    """
    if resume:
        _, saved, _ = read_run_files(run_dir)
        ignored = sorted(set(overrides) - RESUME_OVERRIDES - {"seed"})
        if ignored:
            raise ConfigError("--resume continues the saved configuration; cannot change "
                              + ", ".join(ignored))
        if "seed" in overrides and overrides["seed"] != saved.seed:
            raise ConfigError("--resume cannot change --seed (the run's numbers depend on it)")
        return saved.replace(**{k: v for k, v in overrides.items() if k in RESUME_OVERRIDES}), True
    if overwrite and run_dir.is_dir():
        if checkpoint_files(run_dir):
            raise RunError(f"{run_dir} holds a run with checkpoints; --overwrite only replaces a "
                           "run that stopped before its first one (use --resume or another --out)")
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if run_dir.exists() and any(p.name not in ("data.json", LOCK, "checkpoints")
                                and not atomic.is_temporary(p.name) for p in run_dir.iterdir()):
        if (run_dir / "config.json").exists() and not checkpoint_files(run_dir):
            raise RunError(f"{run_dir} holds a run that stopped before its first checkpoint: "
                           "add --resume to continue it, or --overwrite to start it again")
        if (run_dir / "config.json").exists():
            raise RunError(f"{run_dir} already holds a run: add --resume to continue it, "
                           "or choose another --out")
        raise RunError(f"{run_dir} exists and is not empty; choose another --out")
    return cfg, False


def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.safetensors*"))


def describe(run_dir: Path, cfg: Config, info: DataInfo) -> None:
    """Write ``data.json`` then ``config.json``: the latter marks the directory as a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "data.json", json.dumps(info.to_dict(), indent=2) + "\n")
    atomic.write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")


#: The lock file of a run directory (held while a process trains into it).
LOCK = ".lock"


class RunLock:
    """An exclusive lock on a run directory, so that a second writer is refused, not merged.

    ``flock`` on ``RUN/.lock``, which holds the holder's process id and host: the kernel drops
    the lock when the holder dies however it dies, so a crashed run never blocks its resume. The
    file stays (removing it could let two processes lock two different files). Platforms without
    ``fcntl`` (Windows) train unlocked.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by {holder}; wait for it to finish or "
                           "choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None
