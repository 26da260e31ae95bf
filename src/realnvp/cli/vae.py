"""``realnvp vae``: train a VAE with a flow posterior on binarised images (amortised VI,
Rezende & Mohamed 2015, §6.2).

``realnvp vae --data digits --posterior planar --length 10 --out RUN`` writes a run like
``realnvp train`` does (``config.json``, ``vae.json``, checkpoints, ``metrics.csv``,
``eval.json``: the test negative ELBO and the importance-weighted ``−log p(x)`` in nats per
image); ``--resume RUN`` continues it. ``--config vae-mnist`` is the R&M MNIST recipe (its
``"vae"`` entry holds the VAE's arguments, the rest is the run's configuration).
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import UsageError, add_run_options, positive_int, run_directory

VAE_FLAGS = {  # option -> (config key, type)
    "--data": ("data", str), "--data-dir": ("data_dir", str), "--epochs": ("epochs", int),
    "--batch-size": ("batch_size", int), "--lr": ("lr", float), "--seed": ("seed", int),
    "--device": ("device", str), "--threads": ("threads", int),
}
#: the VAE's arguments and their defaults when neither a flag nor ``--config`` gives them
VAE_DEFAULTS = dict(posterior="gaussian", length=1, latent=40, hidden=400, flow_hidden=128,
                    iw_samples=5000, iaf_transformer="affine", anneal_steps=0)


def read_recipe(path: str | None):
    """``(Config, VAE arguments)`` of a ``--config`` file (``None``: the built-in defaults)."""
    from ..config import CONFIG_DIR, Config, ConfigError

    base = Config(epochs=10, batch_size=100, lr=1e-3, l2=0.0, source="realnvp vae")
    if path is None:
        return base, dict(VAE_DEFAULTS)
    p = Path(path)
    if not p.is_file() and (CONFIG_DIR / f"{p.name}.json").is_file():
        p = CONFIG_DIR / f"{p.name}.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from e
    vae = d.pop("vae", {}) if isinstance(d, dict) else {}
    unknown = sorted(set(vae) - set(VAE_DEFAULTS))
    if unknown:
        raise ConfigError(f"{p}: unknown vae key(s) {unknown}; accepted: {', '.join(VAE_DEFAULTS)}")
    d.setdefault("source", str(p))
    return Config.from_dict(d, base), {**VAE_DEFAULTS, **vae}


def cmd_vae(args) -> int:
    from ..training.vae import summary, train_vae

    overrides = {key: getattr(args, key) for key, _ in VAE_FLAGS.values() if getattr(args, key) is not None}
    resume = args.resume is not None
    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if out is None:
        raise UsageError("realnvp vae: give the run directory with --out RUN (or --resume RUN)")
    cfg, spec = read_recipe(args.config)
    cfg = cfg.replace(**overrides)
    spec.update({k: getattr(args, k) for k in VAE_DEFAULTS if getattr(args, k) is not None})
    with run_directory(out, resume) as run_dir:
        args.resume_hint = f"realnvp vae --resume {run_dir}"
        try:
            result = train_vae(cfg, run_dir, **spec, resume=resume, overrides=overrides if resume else None,
                               quiet=args.quiet, max_steps=args.max_steps, time_budget=args.time_budget)
        except ValueError as e:
            if type(e) is ValueError:
                raise UsageError(f"realnvp vae: {e}") from e  # a bad posterior, length or data set
            raise
    if result:
        if result.get("stopped"):
            print(f"stopped at step {result['steps']} ({result['stopped'].replace('_', ' ')}); "
                  f"continue with: realnvp vae --resume {run_dir}")
        print(f"{run_dir}: {summary(result)}")
    return 0


def add_parser(sub) -> None:

    f = sub.add_parser("vae", help="train a VAE with a flow posterior (amortised variational inference)")
    f.add_argument("--posterior", help="gaussian, planar, radial, iaf or realnvp (default gaussian)")
    f.add_argument("--length", type=int, help="layers K of the posterior flow (default 1)")
    f.add_argument("--latent", type=positive_int, help="latent dimension (default 40)")
    f.add_argument("--hidden", type=positive_int, help="encoder/decoder width (default 400)")
    f.add_argument("--flow-hidden", dest="flow_hidden", type=positive_int,
                   help="width of the IAF/coupling networks and of the context h(x) (default 128)")
    f.add_argument("--iaf-transformer", dest="iaf_transformer",
                   help="the IAF posterior's transformer: affine (the default) or gated (Kingma et al. "
                        "2016, eq. 14)")
    f.add_argument("--anneal-steps", dest="anneal_steps", type=int, metavar="N",
                   help="raise the weight of log p(x, z) in the training loss from 0.01 to 1 over N steps "
                        "(R&M 2015, section 6: 10000); default 0, no annealing")
    f.add_argument("--iw-samples", dest="iw_samples", type=positive_int,
                   help="draws per test image of the importance-weighted -log p(x) (default 5000)")
    f.add_argument("--config", help="a JSON recipe (e.g. vae-mnist): configuration keys and a 'vae' entry")
    add_run_options(f, VAE_FLAGS, "training")
    f.set_defaults(func=cmd_vae)
