"""``realnvp fit``: fit a flow to an unnormalised target by reverse KL (variational inference).

``realnvp fit --target u1 --flow planar --length 32 --out RUN`` writes a run like ``realnvp
train`` does (``config.json``, ``fit.json``, checkpoints, ``metrics.csv``, ``samples/``: ``q``'s
samples beside the target after every epoch, ``eval.json``); ``--resume RUN`` continues it.
"""

from __future__ import annotations

from .common import UsageError, add_run_options, positive_int, run_directory

FIT_FLAGS = {  # option -> (config key, type)
    "--epochs": ("epochs", int), "--batch-size": ("batch_size", int), "--lr": ("lr", float),
    "--seed": ("seed", int), "--device": ("device", str), "--threads": ("threads", int),
}


def cmd_fit(args) -> int:
    from ..config import Config
    from ..training.variational import fit, summary
    from ..vi.bounds import NoSamplingDirection
    from ..vi.targets import TargetError

    overrides = {key: getattr(args, key) for key, _ in FIT_FLAGS.values() if getattr(args, key) is not None}
    resume = args.resume is not None
    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if resume and out is None:
        raise UsageError("--resume needs the run directory (--resume RUN or --out RUN)")
    if not resume and args.target is None:
        raise UsageError("realnvp fit: choose a --target")
    if out is None:
        raise UsageError("realnvp fit: give the run directory with --out RUN")
    # the defaults of a fit (not a data set's recipe): Adam at 1e-3, no penalty, a picture per epoch
    cfg = Config(epochs=10, batch_size=256, lr=1e-3, l2=0.0, valid_size=0, source="realnvp fit")
    cfg = cfg.replace(**overrides)
    with run_directory(out, resume) as run_dir:
        args.resume_hint = f"realnvp fit --resume {run_dir}"
        try:
            result = fit(cfg, run_dir, target=args.target, dim=args.dim, flow=args.flow, length=args.length,
                         hidden=args.hidden, steps_per_epoch=args.steps_per_epoch,
                         anneal_steps=args.anneal_steps, particles=args.particles,
                         eval_samples=args.eval_samples, eval_particles=args.eval_particles,
                         resume=resume, overrides=overrides if resume else None, quiet=args.quiet,
                         max_steps=args.max_steps, time_budget=args.time_budget)
        except (TargetError, NoSamplingDirection, ValueError) as e:
            if isinstance(e, TargetError | NoSamplingDirection) or type(e) is ValueError:
                raise UsageError(str(e)) from e  # a bad target, posterior or setting: one line
            raise
    if result:
        if result.get("stopped"):
            print(f"stopped at step {result['steps']} ({result['stopped'].replace('_', ' ')}); "
                  f"continue with: realnvp fit --resume {run_dir}")
        print(f"{run_dir}: {summary(result)}")
        pictures = run_dir / "samples.png"
        print(f"run: {run_dir}" + (f"  (q beside the target: {pictures})" if pictures.exists() else ""))
    return 0


def add_parser(sub) -> None:
    from ..vi.posteriors import POSTERIORS
    from ..vi.targets import TARGETS

    f = sub.add_parser("fit", help="fit a flow to an unnormalised target density (variational inference)")
    f.add_argument("--target", choices=sorted(TARGETS), help="the target: u1-u4 (Rezende & Mohamed), "
                   "banana, funnel, mixture")
    f.add_argument("--dim", type=positive_int, help="features of the target: the funnel takes any "
                   "dim >= 2 (default 2); the other targets are 2-D")
    f.add_argument("--flow", choices=POSTERIORS, default="planar", help="the posterior flow (default planar)")
    f.add_argument("--length", type=positive_int, default=8, help="layers of the flow (default 8)")
    f.add_argument("--hidden", type=positive_int, default=64,
                   help="width of the IAF/RealNVP/NSF networks (default 64)")
    f.add_argument("--steps-per-epoch", type=positive_int, default=500,
                   help="optimizer steps between evaluations and checkpoints (default 500)")
    f.add_argument("--anneal-steps", type=int, default=0, metavar="N",
                   help="raise the target's weight from 0.01 to 1 over N steps (R&M: 10000; default 0)")
    f.add_argument("--particles", type=positive_int, default=1,
                   help="samples per importance-weighted bound in training (default 1: the ELBO)")
    f.add_argument("--eval-samples", type=positive_int, default=4096,
                   help="samples of each evaluation (the final one takes 4x)")
    f.add_argument("--eval-particles", type=positive_int, default=64,
                   help="samples per importance-weighted bound in the final evaluation")
    add_run_options(f, FIT_FLAGS, "fitting")
    f.set_defaults(func=cmd_fit)
