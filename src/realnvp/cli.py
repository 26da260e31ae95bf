"""The ``realnvp`` command: train, eval, sample, interpolate, score, info.

Every user error (unknown data set or option, a directory that is not a run, a checkpoint that
does not fit, an output that cannot be written, bad input data) ends with one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import __version__, atomic

EXIT_USAGE = 2


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _writable_file(path: str) -> Path:
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


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one probe per process: under torchrun every rank probes the same folder at once
        probe = path / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to run directory {path}: {e.strerror or e}") from e
    return path


# --- train ---------------------------------------------------------------------------------------

TRAIN_FLAGS = {  # option -> (config key, type)
    "--data": ("data", str), "--data-dir": ("data_dir", str), "--epochs": ("epochs", int),
    "--batch-size": ("batch_size", int), "--lr": ("lr", float), "--device": ("device", str),
    "--seed": ("seed", int), "--precision": ("precision", str), "--ema-decay": ("ema_decay", float),
    "--warmup-steps": ("warmup_steps", int), "--image-size": ("image_size", int),
    "--num-workers": ("num_workers", int), "--threads": ("threads", int),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


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
    from .config import Config, config_file_for, read_config_file
    from .training import train

    overrides = {key: getattr(args, key) for key, _ in TRAIN_FLAGS.values()
                 if getattr(args, key) is not None}
    if args.download:
        overrides["download"] = True
    overrides.update(_parse_set(args.set or []))
    resume = args.resume is not None
    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if resume and out is None:
        raise UsageError("--resume needs the run directory (--resume RUN or --out RUN)")
    if args.config:
        cfg = read_config_file(args.config)
    else:
        data = overrides.get("data", Config.data)
        recipe = config_file_for(data)
        cfg = read_config_file(recipe) if recipe else Config()
    cfg = cfg.replace(**overrides)
    if out is None:
        safe = cfg.data.replace(":", "-")
        out = f"runs/{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(out)
    created = not resume and not run_dir.exists()
    if not resume:
        _writable_dir(run_dir)
    try:
        result = train(cfg, run_dir, resume=resume, overrides=overrides if resume else None,
                       quiet=args.quiet, max_steps=args.max_steps, time_budget=args.time_budget)
    except BaseException:
        # a run that failed before writing anything leaves no empty folder (rank 0 alone tidies
        # up under torchrun, so no rank removes a folder another one is about to write into)
        if created and os.environ.get("RANK", "0") == "0" and run_dir.is_dir() \
                and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    if result:
        if result.get("stopped"):
            print(f"stopped at step {result['steps']} ({result['stopped'].replace('_', ' ')}); "
                  f"continue with: realnvp train --resume {run_dir}")
        _print_eval(result, prefix=f"{cfg.data} {result.get('split', 'test')}")
        print(f"run: {run_dir}  (samples: {run_dir / 'samples.png'})")
    return 0


def _print_eval(result: dict, prefix: str) -> None:
    line = (f"{prefix}: {result['bits_per_dim']:.4f} ± {result['bits_per_dim_stderr']:.4f} bits/dim "
            f"over {result['num_examples']} examples")
    if "nll_nats" in result:
        line += f"; NLL {result['nll_nats']:.4f} ± {result['nll_nats_stderr']:.4f} nats"
    if result.get("dequant_samples"):
        line += f" ({result['dequant_samples']} dequantization draws)"
    print(line)
    if result.get("histogram_baseline_bpd") is not None:
        print(f"  (per-pixel histogram baseline: {result['histogram_baseline_bpd']:.4f} bits/dim)")


# --- eval / sample / interpolate / score / info ---------------------------------------------------


def _device(name: str) -> torch.device:
    from .runtime import resolve_device

    return resolve_device(name)


def _load(args):
    from .runs import load_run

    return load_run(args.run, which=args.checkpoint, device=_device(args.device),
                    warn=lambda m: print(m, file=sys.stderr))


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .runtime import seed_everything
    from .training import load_split

    run = _load(args)
    cfg = run.config
    dataset, _ = load_split(cfg, args.split, args.data_dir, augment=False)
    seed_everything(args.seed)
    result = evaluate(run.model, dataset, run.info, args.batch_size, args.dequant_samples,
                      progress=not args.quiet)
    result["split"] = args.split
    _print_eval(result, prefix=f"{cfg.data} {args.split}")
    if args.json:
        atomic.write_text(_writable_file(args.json), json.dumps(result, indent=2) + "\n")
    return 0


def cmd_sample(args) -> int:
    from .inputs import to_pixels
    from .viz import image_grid, samples_and_density, save

    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    if not 0 <= args.temperature < float("inf"):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = _writable_file(args.output)
    run = _load(args)
    device = next(run.model.parameters()).device
    x = run.model.sample(args.n, args.temperature,
                         generator=torch.Generator(device).manual_seed(args.seed)).cpu()
    info = run.info
    suffix = out.suffix.lower()
    if suffix in (".npy", ".csv"):
        import numpy as np

        arr = to_pixels(x, info).numpy() if info.kind == "image" else _unstandardise(x, info)
        with atomic.replacing(out) as tmp:
            if suffix == ".npy":
                with open(tmp, "wb") as f:
                    np.save(f, arr)
            else:
                np.savetxt(tmp, arr.reshape(arr.shape[0], -1), delimiter=",", fmt="%.6g")
    elif info.kind == "image":
        save(image_grid(to_pixels(x, info)), out)
    elif info.dim == 2:  # drawn in the model's (standardised) coordinates
        save(samples_and_density(run.model, x), out)
    else:
        raise UsageError(f"{info.dim}-dimensional samples cannot be drawn; use -o FILE.csv or .npy")
    print(f"wrote {args.n} samples at temperature {args.temperature} to {out}")
    return 0


def _unstandardise(x: torch.Tensor, info):
    import numpy as np

    arr = x.double().numpy()
    if info.mean is not None:
        arr = arr * np.asarray(info.std) + np.asarray(info.mean)
    return arr


def cmd_interpolate(args) -> int:
    from .inputs import pixels_to_unit, to_pixels
    from .training import load_split
    from .viz import image_grid, manifold_latents, save

    out = _writable_file(args.output)
    run = _load(args)
    if run.info.kind != "image":
        raise UsageError("interpolate draws the paper's Figure 6 and needs an image model")
    dataset, _ = load_split(run.config, "test", args.data_dir, augment=False)
    if args.indices:
        idx = args.indices
        if len(idx) != 4 or any(not 0 <= i < len(dataset) for i in idx):
            raise UsageError(f"--indices needs 4 test indices in [0, {len(dataset) - 1}]")
    else:
        g = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(dataset), generator=g)[:4].tolist()
    x = torch.stack([dataset[i] for i in idx])
    device = next(run.model.parameters()).device
    with torch.no_grad():
        z = run.model.encode(pixels_to_unit(x, run.info).to(device))
        images = run.model.decode(manifold_latents(z, args.steps)).cpu()
    save(image_grid(to_pixels(images, run.info), nrow=args.steps), out)
    print(f"wrote the {args.steps}x{args.steps} latent manifold of test examples {idx} to {out}")
    return 0


def cmd_score(args) -> int:
    from .evaluate import nats_per_example, per_example_bits_per_dim
    from .runtime import seed_everything
    from .score import read_inputs

    run = _load(args)
    inputs = read_inputs(args.inputs, run.info)
    seed_everything(args.seed)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["source", "index", "bits_per_dim"]
    continuous = run.info.num_levels is None
    if continuous:
        header.append("nll_nats")
    w.writerow(header)
    for source, batch in inputs:
        for start in range(0, batch.shape[0], args.batch_size):
            chunk = batch[start:start + args.batch_size]
            bpd = per_example_bits_per_dim(run.model, chunk, run.info, args.dequant_samples).cpu()
            for i, b in enumerate(bpd.tolist()):
                row = [source, start + i, f"{b:.6f}"]
                if continuous:
                    row.append(f"{nats_per_example(b, run.info.dim):.6f}")
                w.writerow(row)
    if args.output:
        atomic.write_text(_writable_file(args.output), buf.getvalue())
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def cmd_info(args) -> int:
    from . import checkpoint
    from .models.build import build_model
    from .runs import read_run_files
    from .training import State

    path, cfg, info = read_run_files(args.run)
    model = build_model(cfg, info)
    n_params = sum(p.numel() for p in model.parameters())
    state = {}
    last = path / "checkpoints" / "last.safetensors"
    if checkpoint.exists(last):
        try:
            state = checkpoint.load_with_fallback(last, warn=lambda m: print(m, file=sys.stderr))[1]["state"]
        except checkpoint.CheckpointError as e:
            state = {"error": str(e)}
    best = None if "error" in state or not state else State.from_dict(state).best_score
    eval_file = path / "eval.json"
    result = json.loads(eval_file.read_text()) if eval_file.exists() else None
    summary = {
        "run": str(path), "data": info.to_dict(), "parameters": n_params,
        "epochs_completed": state.get("epoch", 0), "epochs_planned": cfg.epochs,
        "steps": state.get("step", 0), "best_test_bpd_during_training": best,
        "skipped_steps": state.get("skipped_steps", 0), "final_eval": result,
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"run          {path}")
    print(f"data         {info.name} {tuple(info.shape)}, K={info.num_levels}")
    print(f"model        {'RealNVP' if info.kind == 'image' else 'VectorRealNVP'}, {n_params:,} parameters")
    print(f"epochs       {summary['epochs_completed']} of {cfg.epochs} ({summary['steps']} steps)")
    best = summary["best_test_bpd_during_training"]
    print(f"best bpd     {best:.4f}" if isinstance(best, float) else "best bpd     -")
    if result:
        _print_eval(result, prefix="final eval  ")
    if "error" in state:
        print(f"checkpoint   {state['error']}")
    print("config       " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()
                                      if k not in ("notes", "source")))
    return 0


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .config import DEVICES
    from .data.splits import SPLITS
    from .runs import CHECKPOINTS

    p = _Parser(prog="realnvp", description="RealNVP normalizing flows: train, evaluate, sample.")
    p.add_argument("--version", action="version", version=f"realnvp {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: the embedded digits data set)")
    t.add_argument("--config", help="JSON configuration file, or the name of one in configs/")
    for flag, (key, typ) in TRAIN_FLAGS.items():
        t.add_argument(flag, dest=key, type=typ, default=None)
    t.add_argument("--download", action="store_true",
                   help="download missing data (cifar10, mnist, fashion-mnist)")
    t.add_argument("--out", help="run directory (default runs/DATA-TIME)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its last checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any configuration key")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--max-steps", type=_positive_int, metavar="N",
                   help="stop after N optimizer steps in all (checkpoint, evaluate; --resume goes on)")
    t.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                   help="stop at the first step boundary after SECONDS of training (as --max-steps)")
    t.set_defaults(func=cmd_train)

    def run_args(sp, checkpoint_default="best"):
        sp.add_argument("run", help="run directory")
        sp.add_argument("--checkpoint", choices=CHECKPOINTS, default=checkpoint_default)
        sp.add_argument("--device", default="auto", choices=DEVICES)
        sp.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("eval", help="bits/dim over a whole split")
    run_args(e, "last")
    e.add_argument("--split", choices=SPLITS, default="test")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=_positive_int, default=256)
    e.add_argument("--dequant-samples", type=_positive_int, default=4)
    e.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="draw samples (PNG grid, 2-D plot, or .npy/.csv)")
    run_args(s, "last")
    s.add_argument("-n", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("-o", "--output", default="samples.png")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser("interpolate", help="decode the latent manifold of four test examples (paper Fig. 6)")
    run_args(i, "last")
    i.add_argument("-o", "--output", default="manifold.png")
    i.add_argument("--steps", type=_positive_int, default=8)
    i.add_argument("--indices", type=int, nargs=4)
    i.add_argument("--data-dir")
    i.set_defaults(func=cmd_interpolate)

    c = sub.add_parser("score", help="per-example bits/dim of new images or rows, as CSV")
    run_args(c, "last")
    c.add_argument("inputs", nargs="+", help="image files, .npy arrays or .csv files")
    c.add_argument("-o", "--output", help="CSV file (default: stdout)")
    c.add_argument("--batch-size", type=_positive_int, default=256)
    c.add_argument("--dequant-samples", type=_positive_int, default=4)
    c.set_defaults(func=cmd_score)

    f = sub.add_parser("info", help="configuration, parameter count, progress, best bits/dim")
    f.add_argument("run")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .runs import RunError
    from .training import TrainingError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("realnvp: choose a command: train, eval, sample, interpolate, score, info "
                             "(realnvp --help)")
        return args.func(args)
    except (UsageError, ConfigError, DataError, RunError, CheckpointError) as e:
        if debug:
            raise
        print(f"error: {e}" if not str(e).startswith("realnvp") else f"{e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
