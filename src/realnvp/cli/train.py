"""``realnvp train``: a configuration from recipes, files and flags, then the trainer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import UsageError, positive_float, positive_int, print_eval, run_directory


def _columns(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated column numbers, got {text!r}") from None


TRAIN_FLAGS = {  # option -> (config key, type)
    "--data": ("data", str), "--model": ("model", str), "--data-dir": ("data_dir", str),
    "--epochs": ("epochs", int),
    "--batch-size": ("batch_size", int), "--lr": ("lr", float), "--device": ("device", str),
    "--seed": ("seed", int), "--precision": ("precision", str), "--ema-decay": ("ema_decay", float),
    "--warmup-steps": ("warmup_steps", int), "--image-size": ("image_size", int),
    "--num-workers": ("num_workers", int), "--threads": ("threads", int),
    "--context-columns": ("context_columns", _columns),
    "--dequantization": ("dequantization", str),
}


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def cmd_train(args) -> int:
    from ..config import Config, config_file_for, read_config_file
    from ..training import train

    overrides = {key: getattr(args, key) for key, _ in TRAIN_FLAGS.values()
                 if getattr(args, key) is not None}
    if args.download:
        overrides["download"] = True
    overrides.update(_parse_set(args.set or []))
    resume = args.resume is not None
    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if resume and out is None:
        raise UsageError("--resume needs the run directory (--resume RUN or --out RUN)")
    if resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite starts it again; choose one")
    if resume and args.config:
        raise UsageError("--resume continues the run's saved configuration; --config cannot change it")
    if args.config:
        cfg = read_config_file(args.config)
    else:
        data = overrides.get("data", Config.data)
        recipe = config_file_for(data)
        cfg = read_config_file(recipe) if recipe else Config()
    cfg = cfg.replace(**overrides)
    if cfg.data_dir and not resume:  # stored absolute: the run is usable from any directory
        cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    if out is None:
        safe = cfg.data.replace(":", "-")
        out = f"runs/{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    with run_directory(out, resume) as run_dir:
        args.resume_hint = f"realnvp train --resume {run_dir}"
        result = train(cfg, run_dir, resume=resume, overrides=overrides if resume else None,
                       quiet=args.quiet, max_steps=args.max_steps, time_budget=args.time_budget,
                       overwrite=args.overwrite)
    if result:
        if result.get("stopped") == "early_stopping":
            print(f"stopped early after epoch {result['epochs']}: no better validation score for "
                  f"{cfg.patience} epochs")
        elif result.get("stopped"):
            print(f"stopped at step {result['steps']} ({result['stopped'].replace('_', ' ')}); "
                  f"continue with: realnvp train --resume {run_dir}")
        print_eval(result, prefix=f"{cfg.data} {result.get('split', 'test')}")
        pictures = run_dir / "samples.png"
        print(f"run: {run_dir}" + (f"  (samples: {pictures})" if pictures.exists() else ""))
    return 0


class _ListKeys(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="list every configuration key "
                         "(for --set), its default and meaning, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from ..config import describe_keys

        print(describe_keys())
        parser.exit()


def add_parser(sub) -> None:
    from ..config import DEQUANTIZATIONS, DEVICES, HELP, MODELS
    from ..precision import PRECISIONS

    choices = {"device": DEVICES, "precision": PRECISIONS, "model": MODELS,
               "dequantization": DEQUANTIZATIONS}
    t = sub.add_parser("train", help="train a model (default: the embedded digits data set)")
    t.add_argument("--config", help="JSON configuration file, or the name of one in configs/")
    for flag, (key, typ) in TRAIN_FLAGS.items():
        t.add_argument(flag, dest=key, type=typ, default=None, choices=choices.get(key),
                       help=HELP[key])
    t.add_argument("--list-keys", action=_ListKeys)
    t.add_argument("--download", action="store_true",
                   help="download missing data (cifar10, mnist, fashion-mnist)")
    t.add_argument("--out", help="run directory (default runs/DATA-TIME)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its last checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="start again in --out if its run stopped before its first checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any configuration key")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="stop after N optimizer steps in all (checkpoint, evaluate; --resume goes on)")
    t.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="stop at the first step boundary after SECONDS of training (as --max-steps)")
    t.set_defaults(func=cmd_train)
