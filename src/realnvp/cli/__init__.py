"""The ``realnvp`` command: train, fit, vae, eval, sample, interpolate, latents, score, info, export.

Every user error (unknown data set or option, a directory that is not a run, a checkpoint that
does not fit, an output that cannot be written, bad input data) ends with one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

from .. import __version__
from . import fit, runs, train, vae
from .common import EXIT_USAGE, Parser, UsageError


def build_parser() -> Parser:
    p = Parser(prog="realnvp", description="RealNVP normalizing flows: train, evaluate, sample.")
    p.add_argument("--version", action="version", version=f"realnvp {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    train.add_parser(sub)
    runs.add_parsers(sub)
    fit.add_parser(sub)
    vae.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..bijectors import ODESolverError
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data import DataError
    from ..export import ExportError
    from ..runs import RunError
    from ..training import TrainingError

    argv = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in argv  # anywhere: realnvp train --debug ... as well as realnvp --debug train
    argv = [a for a in argv if a != "--debug"]
    if hasattr(sys.stdout, "reconfigure"):  # a redirected log is readable while a run goes on
        sys.stdout.reconfigure(line_buffering=True)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("realnvp: choose a command: train, fit, vae, eval, sample, interpolate, "
                             "latents, score, info, export (realnvp --help)")
        return args.func(args)
    except (UsageError, ConfigError, DataError, RunError, CheckpointError, ExportError) as e:
        if debug:
            raise
        print(f"error: {e}" if not str(e).startswith("realnvp") else f"{e}", file=sys.stderr)
        return EXIT_USAGE
    except (TrainingError, ODESolverError) as e:  # a CNF's solve that its guard stopped
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None) if "args" in locals() else None
        print("interrupted" + (f"; continue with: {hint}" if hint else ""), file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
