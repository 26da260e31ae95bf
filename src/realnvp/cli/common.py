"""What every command shares: the one-line user error, output checks, number types, printing."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

EXIT_USAGE = 2


class UsageError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def writable_file(path: str) -> Path:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"output {p} is a directory; give a file name")
    if not parent.is_dir():
        raise UsageError(f"cannot write {p}: directory {parent} does not exist")
    try:
        with open(parent / f".{p.name}.probe", "w"):
            pass
        (parent / f".{p.name}.probe").unlink()
    except OSError as e:
        raise UsageError(f"cannot write {p}: {e.strerror or e}") from e
    return p


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one probe per process: under torchrun every rank probes the same folder at once
        probe = path / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to run directory {path}: {e.strerror or e}") from e
    return path


def _number(text: str, kind: type, what: str, ok, bound: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _number(text, int, "a positive integer", lambda v: v >= 1, ">= 1")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"),
                   "a finite number > 0")


def print_eval(result: dict, prefix: str) -> None:
    """One line of figures (continuous data: NLL in nats first), the tighter bound and the
    baseline below it."""
    n = result["num_examples"]
    bpd = f"{result['bits_per_dim']:.4f} ± {result['bits_per_dim_stderr']:.4f} bits/dim"
    if "nll_nats" in result:
        line = (f"{prefix}: NLL {result['nll_nats']:.4f} ± {result['nll_nats_stderr']:.4f} nats "
                f"({bpd}) over {n} examples")
    else:
        line = f"{prefix}: {bpd} over {n} examples"
    if result.get("dequant_samples"):
        learned = ", variational dequantization" if result.get("dequantization") == "variational" else ""
        line += f" ({result['dequant_samples']} dequantization draws{learned})"
    print(line)
    if "entropy_gap_nats" in result:
        print(f"  gap to the generator's entropy {result['entropy_nats']:.4f} nats: "
              f"{result['entropy_gap_nats']:+.4f} nats")
    if result.get("importance_samples", 1) > 1:
        print(f"  importance-weighted over {result['importance_samples']} draws: "
              f"{result['importance_weighted_bpd']:.4f} ± {result['importance_weighted_bpd_stderr']:.4f}"
              " bits/dim")
    if "uniform_bits_per_dim" in result:
        print(f"  the same model with uniform dequantization: {result['uniform_bits_per_dim']:.4f} "
              f"bits/dim, importance-weighted {result['uniform_importance_weighted_bpd']:.4f}")
    if result.get("histogram_baseline_bpd") is not None:
        print(f"  (per-pixel histogram baseline: {result['histogram_baseline_bpd']:.4f} bits/dim)")


def add_run_options(parser, flags: dict, what: str) -> None:
    """The options every command that writes a run shares: its configuration ``flags`` (option
    -> (key, type), ``--device`` with its choices), ``--out``, ``--resume``, ``--quiet``,
    ``--max-steps`` and ``--time-budget`` (``what``: the word for the run's work in the help,
    e.g. "training")."""
    from ..config import DEVICES

    for flag, (key, typ) in flags.items():
        parser.add_argument(flag, dest=key, type=typ, default=None,
                            choices=DEVICES if key == "device" else None)
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                        help="continue the run in RUN (or --out) from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-steps", type=positive_int, metavar="N",
                        help="stop after N optimizer steps in all")
    parser.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                        help=f"stop at the first step boundary after SECONDS of {what}")


@contextlib.contextmanager
def run_directory(out, resume: bool):
    """The run directory ``out`` of a command that writes a run (train, fit, vae), checked
    writable unless resuming; a run that fails before writing anything but its lock leaves no
    empty folder behind (rank 0 alone tidies up under torchrun, so no rank removes a folder
    another one is about to write into)."""
    from ..training.rundir import LOCK

    run_dir = Path(out)
    created = not resume and not run_dir.exists()
    if not resume:
        writable_dir(run_dir)
    try:
        yield run_dir
    except BaseException:
        if created and os.environ.get("RANK", "0") == "0" and run_dir.is_dir() \
                and {p.name for p in run_dir.iterdir()} <= {LOCK}:
            (run_dir / LOCK).unlink(missing_ok=True)
            run_dir.rmdir()
        raise
