"""The commands that read a finished (or interrupted) run: eval, sample, interpolate, latents, score,
info, export."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import torch

from .. import atomic
from .common import UsageError, positive_int, print_eval, writable_dir, writable_file

#: Output bounds: samples in one file, the batch they are drawn in, the manifold grid's side.
MAX_SAMPLES = 1_000_000
SAMPLE_BATCH = 4096
MAX_MANIFOLD_STEPS = 64
#: The scale view's columns at most (each of its S + 1 rows decodes that many latents).
MAX_LATENT_COLUMNS = 64


def _device(name: str) -> torch.device:
    from ..runtime import resolve_device

    return resolve_device(name)


def _load(args):
    from ..runs import load_run

    return load_run(args.run, which=args.checkpoint, device=_device(args.device),
                    warn=lambda m: print(m, file=sys.stderr))


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _needs_data(run, command: str) -> None:
    from ..runs import is_fit_run, is_vae_run

    if is_fit_run(run.path):
        raise UsageError(f"{run.path} is a run of realnvp fit: it has no data for {command}; its "
                         "bounds are in eval.json (realnvp info shows them), realnvp sample draws from q")
    if is_vae_run(run.path):
        raise UsageError(f"{run.path} is a run of realnvp vae: {command} takes flows; its test -ELBO "
                         "and importance-weighted -log p(x) are in eval.json (realnvp info shows "
                         "them), realnvp sample decodes draws from the prior")


def _context(args, run, n: int, device, of: str | None = None) -> torch.Tensor | None:
    """The ``(n, k)`` context that ``--label`` or ``--context`` gives a conditional run (``None``
    for an unconditional one, which refuses both); a class-conditional run without ``--label``
    gets the classes in turn, or, when the label is that ``of`` given inputs, a refusal."""
    from ..inputs import class_context, column_context

    if of is not None and run.model.context_features and not run.info.context_features \
            and args.label is None:
        raise UsageError(f"this run is class-conditional: give --label N, the class of {of}")
    if run.info.context_features and args.label is not None:
        raise UsageError("--label: this run is conditioned on context columns, not on classes; "
                         "give --context V1,...")
    values = getattr(args, "context", None)  # the commands that take --context
    try:
        if run.info.context_features or values is not None:
            return column_context(values, run.info, n, device)
        return class_context(run.model, n, device, args.label)
    except ValueError as e:
        given = ("--context " + ",".join(f"{v:g}" for v in values) if values is not None
                 else f"--label {args.label}" if args.label is not None else args.command)
        raise UsageError(f"{given}: {e}") from None


def cmd_eval(args) -> int:
    from ..evaluate import evaluate_side_by_side
    from ..runtime import seed_everything
    from ..training import load_split

    out = writable_file(args.json) if args.json else None  # before the evaluation, not after
    run = _load(args)
    _needs_data(run, "eval")
    cfg = run.config
    dataset, _ = load_split(cfg, args.split, args.data_dir, augment=False)
    seed_everything(args.seed)
    result = evaluate_side_by_side(run.model, dataset, run.info, args.batch_size,
                                   args.dequant_samples, progress=not args.quiet,
                                   importance_samples=args.importance_samples,
                                   dequantizer=run.dequantizer)
    result["split"] = args.split
    print_eval(result, prefix=f"{cfg.data} {args.split}")
    if args.json:
        atomic.write_text(out, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_sample(args) -> int:
    from ..inputs import to_levels, to_pixels
    from ..runs import is_fit_run, is_vae_run
    from ..viz import image_grid, samples_and_density, save, scatter_plot

    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    if args.n > MAX_SAMPLES:
        raise UsageError(f"-n {args.n} is more than {MAX_SAMPLES:,} samples in one file; "
                         "run sample several times with different --seed")
    if args.temperature is not None and not 0 <= args.temperature < float("inf"):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = writable_file(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy", ".csv"):
        raise UsageError(f"-o {out}: choose the format by its extension: .png, .npy or .csv")
    if suffix == ".png" and args.n > SAMPLE_BATCH:
        raise UsageError(f"a picture of {args.n:,} samples is too large; at most {SAMPLE_BATCH} "
                         "(or write .npy / .csv)")
    run = _load(args)
    if is_vae_run(run.path):
        args.temperature = 1.0 if args.temperature is None else args.temperature
        return _sample_vae(args, run, out)
    args.temperature = 0.7 if args.temperature is None else args.temperature
    device = next(run.model.parameters()).device
    contexts = [_context(args, run, m, device)
                for m in (min(SAMPLE_BATCH, args.n - i) for i in range(0, args.n, SAMPLE_BATCH))]
    g = torch.Generator(device).manual_seed(args.seed)
    x = torch.cat([run.model.sample(min(SAMPLE_BATCH, args.n - i), args.temperature, generator=g,
                                    context=c).cpu()
                   for i, c in zip(range(0, args.n, SAMPLE_BATCH), contexts, strict=True)])
    info = run.info
    if suffix in (".npy", ".csv"):
        # images as the data's levels 0…K−1 (score reads them back), vectors in the data's units
        arr = to_levels(x, info).numpy() if info.kind == "image" else _unstandardise(x, info)
        _write_array(out, arr)
    elif info.kind == "image":
        save(image_grid(to_pixels(x, info)), out)
    elif info.dim == 2 and is_fit_run(run.path):  # q has no density direction to draw
        save(scatter_plot(x), out)
    elif info.dim == 2 and run.model.context_features:
        raise UsageError("the density of a conditional run cannot be drawn; use -o FILE.csv or .npy")
    elif info.dim == 2:  # drawn in the model's (standardised) coordinates
        save(samples_and_density(run.model, x), out)
    else:
        raise UsageError(f"{info.dim}-dimensional samples cannot be drawn; use -o FILE.csv or .npy")
    print(f"wrote {args.n} samples at temperature {args.temperature} to {out}")
    return 0


def _write_array(out: Path, arr) -> None:
    """``arr`` (one row per sample) to ``out``, .npy or .csv (flattened rows), atomically."""
    import numpy as np

    with atomic.replacing(out) as tmp:
        if out.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, arr)
        else:
            np.savetxt(tmp, arr.reshape(arr.shape[0], -1), delimiter=",", fmt="%.6g")


def _sample_vae(args, run, out: Path) -> int:
    """``realnvp sample`` of a VAE run: the decoder's Bernoulli means of prior draws, as a grid of
    grey images (.png) or as probabilities in [0, 1] of shape ``(n, C, H, W)`` (.npy, .csv)."""
    from ..viz import image_grid, save

    if args.label is not None or args.context is not None:
        raise UsageError(f"{run.path} is a run of realnvp vae: its model is unconditional "
                         "(no --label or --context)")
    device = next(run.model.parameters()).device
    g = torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad():
        means = torch.cat([run.model.sample(min(SAMPLE_BATCH, args.n - i), args.temperature,
                                            generator=g).cpu()
                           for i in range(0, args.n, SAMPLE_BATCH)]).reshape(args.n, *run.info.shape)
    if out.suffix.lower() == ".png":
        save(image_grid((means * 255).round().to(torch.uint8)), out)
    else:
        _write_array(out, means.numpy())
    print(f"wrote the decoder's means of {args.n} prior draws at temperature {args.temperature} to {out}")
    return 0


def _unstandardise(x: torch.Tensor, info):
    import numpy as np

    arr = x.double().numpy()
    if info.mean is not None:
        arr = arr * np.asarray(info.std) + np.asarray(info.mean)
    return arr


def cmd_interpolate(args) -> int:
    from ..inputs import pixels_to_unit, to_pixels
    from ..latents import manifold
    from ..training import load_split
    from ..viz import image_grid, save

    if args.steps > MAX_MANIFOLD_STEPS:
        raise UsageError(f"--steps {args.steps} would decode {args.steps ** 2:,} images; "
                         f"at most {MAX_MANIFOLD_STEPS}")
    out = writable_file(args.output)
    run = _load(args)
    _needs_data(run, "interpolate")
    if run.info.kind != "image":
        raise UsageError("interpolate draws the paper's Figure 6 and needs an image model")
    device = next(run.model.parameters()).device
    if args.label is not None:
        _context(args, run, 1, device)  # an unconditional run, or a class out of range: refused
    dataset, _ = load_split(run.config, "test", args.data_dir, augment=False)
    idx, label = _manifold_examples(args, dataset, run.model.context_features > 0)
    args.label = label
    context = _context(args, run, 1, device)
    x = torch.stack([dataset[i][0] if label is not None else dataset[i] for i in idx])
    images = manifold(run.model, pixels_to_unit(x, run.info).to(device), args.steps, context).cpu()
    save(image_grid(to_pixels(images, run.info), nrow=args.steps), out)
    of = "" if label is None else f", encoded and decoded in class {label}"
    print(f"wrote the {args.steps}x{args.steps} latent manifold of test examples {idx}{of} to {out}")
    return 0


def _manifold_examples(args, dataset, conditional: bool) -> tuple[list[int], int | None]:
    """The four test examples of ``interpolate`` (``--indices``, or drawn with ``--seed``) and,
    for a class-conditional run, the one class that encodes and decodes them: ``--label``, else
    the examples' own (``--indices`` of several classes are refused); drawn examples are then
    four of that class (of the first drawn example's class without ``--label``)."""
    if len(dataset) < 4:
        raise UsageError(f"the test split has {len(dataset)} examples; the manifold needs 4")
    if args.indices and any(not 0 <= i < len(dataset) for i in args.indices):
        raise UsageError(f"--indices needs 4 test indices in [0, {len(dataset) - 1}]")
    labels = dataset.labels if conditional else None
    if args.indices:
        if labels is None or args.label is not None:
            return args.indices, args.label
        classes = sorted({int(labels[i]) for i in args.indices})
        if len(classes) > 1:
            raise UsageError(f"--indices: test examples of classes {classes}; the manifold is "
                             "encoded and decoded in one class: give --label N")
        return args.indices, classes[0]
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    if labels is None:
        return order[:4].tolist(), None
    label = int(labels[order[0]]) if args.label is None else args.label
    idx = order[labels[order] == label][:4].tolist()
    if len(idx) < 4:
        raise UsageError(f"--label {label}: the test split has {len(idx)} examples of that class; "
                         "the manifold needs 4 (or give --indices)")
    return idx, label


def _scale_slices(run) -> list[slice]:
    """The run's per-scale latent coordinates; a one-line refusal for a run without scales."""
    _needs_data(run, "latents")
    if run.info.kind != "image":
        raise UsageError(f"latents shows what each scale of a multi-scale image model encodes; "
                         f"{run.path} is a {run.info.kind} run ({run.config.model})")
    try:
        slices = run.model.scale_slices()
    except ValueError as e:
        raise UsageError(f"latents: {e}") from None
    if len(slices) < 2:
        raise UsageError(f"latents: this {run.config.model} model has a single scale "
                         "(num_scales=1): there is nothing to keep apart")
    return slices


def _latents_source(args, run, device) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """The latent ``(1, D)`` of ``--image`` (a test index or an image file; ``None`` for
    ``sample``), its context ``(1, k)`` (a class-conditional run's: ``--label``, else a test
    example's own label; ``None`` for an unconditional run) and words for it."""
    from ..inputs import pixels_to_unit
    from ..score import read_inputs
    from ..training import load_split

    label = args.label
    if args.image.isdigit():
        dataset, _ = load_split(run.config, "test", args.data_dir, augment=False)
        i = int(args.image)
        if i >= len(dataset):
            raise UsageError(f"--image {i}: the test split has examples 0 to {len(dataset) - 1}")
        x, what = dataset[i], f"test example {i}"
        if isinstance(x, tuple):  # a labelled view: (image, label)
            x, label = x[0], int(x[1]) if label is None else label
        x = x[None]
    elif args.image != "sample":
        x, what = read_inputs([args.image], run.info)[0][1][:1], args.image
    else:
        x, what = None, f"a sample (seed {args.seed})"
    args.label = label
    context = _context(args, run, 1, device, of=what)
    if context is not None:
        what += f", class {label}"
    z = None if x is None else run.model.encode(pixels_to_unit(x, run.info).to(device), context)
    return z, context, what


def cmd_latents(args) -> int:
    from ..inputs import to_pixels
    from ..latents import scale_rows
    from ..viz import image_grid, save

    if not 1 <= args.n <= MAX_LATENT_COLUMNS:
        raise UsageError(f"-n must be in [1, {MAX_LATENT_COLUMNS}], got {args.n}")
    if not 0 <= args.temperature < float("inf"):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = writable_file(args.output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o {out}: latents writes a picture; give a .png file")
    run = _load(args)
    _scale_slices(run)
    device = next(run.model.parameters()).device
    with torch.no_grad():
        z, context, what = _latents_source(args, run, device)
    g = torch.Generator(device).manual_seed(args.seed)
    images, keeps = scale_rows(run.model, z, args.n, args.temperature, generator=g, context=context)
    save(image_grid(to_pixels(images.cpu(), run.info), nrow=args.n), out)
    print(f"wrote the scale view of {what} to {out}: {len(keeps)} rows (keeping the coarsest "
          f"{', '.join(map(str, keeps))} of {keeps[0]} scales) x {args.n} draws of the rest at "
          f"temperature {args.temperature}")
    return 0


def cmd_score(args) -> int:
    from ..evaluate import nats_per_example, per_example_bits_per_dim
    from ..runtime import seed_everything
    from ..score import read_inputs

    run = _load(args)
    _needs_data(run, "score")
    info = run.info
    inputs = read_inputs(args.inputs, info, run.config.context_columns)
    if args.context is not None and any(c is not None for _, _, c in inputs):
        raise UsageError("--context: the rows hold the context columns already; give rows of the "
                         f"{info.dim} modelled columns with --context, or the whole rows without it")
    device = next(run.model.parameters()).device
    seed_everything(args.seed)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["source", "row", "bits_per_dim"]
    continuous = info.num_levels is None
    # continuous data: in the input's units, so the standardisation's Jacobian Σ log σ is added
    # to the standardised NLL (the run's own figures, like the papers', are standardised)
    log_scale = sum(math.log(s) for s in info.std) if continuous and info.std else 0.0
    if continuous:
        header.append("nll_nats")
    w.writerow(header)
    for source, batch, row_context in inputs:
        for start in range(0, batch.shape[0], args.batch_size):
            chunk = batch[start:start + args.batch_size]
            context = row_context[start:start + args.batch_size] if row_context is not None \
                else _context(args, run, chunk.shape[0], device, of="the inputs")
            bpd = per_example_bits_per_dim(run.model, chunk, info, args.dequant_samples,
                                           dequantizer=run.dequantizer, context=context).cpu()
            for i, b in enumerate(bpd.tolist()):
                nll = nats_per_example(b, info.dim) + log_scale
                row = [source, start + i + 1, f"{nll / (info.dim * math.log(2)) if continuous else b:.6f}"]
                if continuous:
                    row.append(f"{nll:.6f}")
                w.writerow(row)
    if args.output:
        atomic.write_text(writable_file(args.output), buf.getvalue())
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def cmd_info(args) -> int:
    from .. import checkpoint
    from ..runs import is_fit_run, is_vae_run, read_run_files, run_model
    from ..training import State

    path, cfg, info = read_run_files(args.run)
    model = run_model(path, cfg, info)
    n_params = sum(p.numel() for p in model.parameters())
    state = {}
    last = path / "checkpoints" / "last.safetensors"
    if checkpoint.exists(last):
        try:
            state = checkpoint.load_with_fallback(last, warn=lambda m: print(m, file=sys.stderr))[1]["state"]
        except checkpoint.CheckpointError as e:
            state = {"error": str(e)}
    best = None if "error" in state or not state else State.from_dict(state).best_score
    best = best if best is not None and math.isfinite(best) else None  # no epoch scored yet
    # a fit run selects on its fresh draws; without a validation split nothing is selected and
    # the state's score is the last epoch's on the test split
    selected = bool(cfg.valid_size) or is_fit_run(path)
    eval_file = path / "eval.json"
    result = json.loads(eval_file.read_text()) if eval_file.exists() else None
    summary = {
        "run": str(path), "data": info.to_dict(), "parameters": n_params,
        "epochs_completed": state.get("epoch", 0), "epochs_planned": cfg.epochs,
        "steps": state.get("step", 0), "best_selection_score": best if selected else None,
        "selected_on": "valid" if selected else None,
        "last_test_score": None if selected else best,
        "skipped_steps": state.get("skipped_steps", 0), "final_eval": result,
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"run          {path}")
    print(f"data         {info.name} {tuple(info.shape)}, K={info.num_levels}")
    kind = "fitted posterior" if is_fit_run(path) else cfg.model
    if is_vae_run(path):
        spec = model.config
        kind = (f"VAE with a {spec['posterior']} posterior"
                + (f" of {spec['length']} layers" if spec["posterior"] != "gaussian" else "")
                + f", latent {spec['latent']}, hidden {spec['hidden']}")
    print(f"model        {kind} ({type(model).__name__}), {n_params:,} parameters")
    print(f"epochs       {summary['epochs_completed']} of {cfg.epochs} ({summary['steps']} steps)")
    if not (isinstance(best, float) and math.isfinite(best)):
        print("best score   -")
    elif selected:
        print(f"best score   {best:.4f} (valid)")
    else:
        print(f"test score   {best:.4f} (the last epoch's: no validation split, nothing selected)")
    if result and is_fit_run(path):
        from ..training.variational import summary as fit_summary

        print(f"final eval   {fit_summary(result)}")
    elif result and is_vae_run(path):
        from ..training.vae import summary as vae_summary

        print(f"final eval   {vae_summary(result)}")
    elif result:
        print_eval(result, prefix="final eval  ")
    if "error" in state:
        print(f"checkpoint   {state['error']}")
    print("config       " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()
                                      if k not in ("notes", "source")))
    return 0


def _export_inputs(args, run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to 64 test examples in model space (images at their bins' centres), with their context
    for a conditional run, on the model's device: what the exported programs are checked on."""
    from torch.utils.data import DataLoader

    from ..inputs import batch_parts, pixels_to_unit
    from ..training import load_split

    dataset, _ = load_split(run.config, "test", args.data_dir, augment=False)
    device = next(run.model.parameters()).device
    x, context = batch_parts(next(iter(DataLoader(dataset, batch_size=64))), run.info, device)
    inputs = pixels_to_unit(x, run.info) if run.info.kind == "image" else x.float()
    return inputs.to(device), context


def cmd_export(args) -> int:
    from ..export import check_exportable, export, export_onnx

    out = Path(args.output)
    onnx = out.suffix.lower() == ".onnx"
    if not onnx and out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; give a folder for density.pt2 and sample.pt2 "
                         "(or FILE.onnx for ONNX)")
    run = _load(args)
    _needs_data(run, "export")  # before the output folder is made: a refusal leaves nothing
    check_exportable(run.model)
    if onnx:
        writable_file(args.output)
    else:
        made = not out.exists()
        writable_dir(out)
    inputs, context = _export_inputs(args, run)
    if onnx:
        diff = export_onnx(run.model, inputs, out, run.info.num_levels, context)["max_abs_difference"]
        print(f"wrote {out}, the density path as ONNX (onnxruntime = eager to "
              f"{diff['density']:.2g} nats on {len(inputs)} test examples)")
        return 0
    try:
        diff = export(run.model, inputs, out, run.info.num_levels, context)["max_abs_difference"]
    except BaseException:
        if made and not any(out.iterdir()):  # the exporter refused: leave no empty folder behind
            out.rmdir()
        raise
    print(f"wrote {out / 'density.pt2'} and {out / 'sample.pt2'} (exported = eager to "
          f"{diff['density']:.2g} nats and {diff['sample']:.2g} on {len(inputs)} test examples)")
    return 0


def add_parsers(sub) -> None:
    from ..config import DEVICES
    from ..runs import CHECKPOINTS
    from ..training.data import SPLITS

    def run_args(sp, checkpoint_default="best"):
        sp.add_argument("run", help="run directory")
        sp.add_argument("--checkpoint", choices=CHECKPOINTS, default=checkpoint_default)
        sp.add_argument("--device", default="auto", choices=DEVICES)
        sp.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("eval", help="bits/dim over a whole split")
    run_args(e, "last")
    e.add_argument("--split", choices=SPLITS, default="test")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--dequant-samples", type=positive_int, default=4)
    e.add_argument("--importance-samples", type=positive_int, metavar="S",
                   help="draws of the importance-weighted estimate (default: --dequant-samples)")
    e.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="draw samples (PNG grid, 2-D plot, or .npy/.csv)")
    run_args(s, "last")
    s.add_argument("-n", type=int, default=64,
                   help=f"number of samples (at most {MAX_SAMPLES:,}; drawn {SAMPLE_BATCH} at a time)")
    s.add_argument("--temperature", type=float, default=None,
                   help="scale of the base (a VAE's prior) draws: default 0.7 for flows, Glow's "
                        "choice for its pictures; 1 for VAE runs")
    s.add_argument("--label", type=int, default=None,
                   help="class of every sample (class-conditional runs; default: the classes in turn)")
    s.add_argument("--context", type=_floats, default=None, metavar="V1,V2,...",
                   help="values of the context columns, in the data's units (runs trained with "
                        "context_columns)")
    s.add_argument("-o", "--output", default="samples.png")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser("interpolate", help="decode the latent manifold of four test examples (paper Fig. 6)")
    run_args(i, "last")
    i.add_argument("-o", "--output", default="manifold.png")
    i.add_argument("--steps", type=positive_int, default=8,
                   help=f"the grid's side (at most {MAX_MANIFOLD_STEPS}: steps² images are decoded)")
    i.add_argument("--indices", type=int, nargs=4,
                   help="four test examples (default: four drawn with --seed; of one class on "
                        "class-conditional runs)")
    i.add_argument("--label", type=int, default=None,
                   help="class-conditional runs: the class to encode and decode the four in "
                        "(default: the examples' own, which must then be one)")
    i.add_argument("--data-dir")
    i.set_defaults(func=cmd_interpolate)

    t = sub.add_parser("latents", help="what each scale encodes: keep the coarsest k scales of "
                       "an image's latent, resample the rest (paper App. D); one row per k")
    run_args(t, "last")
    t.add_argument("-o", "--output", default="scales.png", help="PNG file")
    t.add_argument("--image", default="0", metavar="INDEX|FILE|sample",
                   help="a test example's index (default 0), an image file or .npy array as score "
                        "reads them (its first image), or 'sample' (a sample of the model)")
    t.add_argument("--temperature", type=float, default=0.7,
                   help="the prior's standard deviation for the resampled scales")
    t.add_argument("-n", type=int, default=8,
                   help=f"columns: resampled draws per row (at most {MAX_LATENT_COLUMNS})")
    t.add_argument("--label", type=int, default=None,
                   help="class-conditional runs: the class to encode and decode in (default: a "
                        "test example's own; required for an image file or 'sample')")
    t.add_argument("--data-dir")
    t.set_defaults(func=cmd_latents)

    c = sub.add_parser("score", help="per-example bits/dim of new images or rows, as CSV (rows "
                       "counted from 1; continuous data in the input's units)")
    run_args(c, "last")
    c.add_argument("inputs", nargs="+", help="image files, .npy arrays or .csv files")
    c.add_argument("-o", "--output", help="CSV file (default: stdout)")
    c.add_argument("--batch-size", type=positive_int, default=256)
    c.add_argument("--dequant-samples", type=positive_int, default=4)
    c.add_argument("--label", type=int, default=None,
                   help="the class of every input (class-conditional runs: required)")
    c.add_argument("--context", type=_floats, default=None, metavar="V1,V2,...",
                   help="values of the context columns for every row, in the data's units (runs "
                        "trained with context_columns, when the rows hold only the modelled "
                        "columns; rows of the training file's layout carry their own)")
    c.set_defaults(func=cmd_score)

    x = sub.add_parser("export", help="the density and sampling paths as torch.export programs, "
                       "or the density path as ONNX")
    run_args(x, "best")
    x.add_argument("-o", "--output", required=True,
                   help="folder for density.pt2, sample.pt2 (torch.export); or FILE.onnx: the "
                        "density path as ONNX (needs the onnx extra)")
    x.add_argument("--data-dir")
    x.set_defaults(func=cmd_export)

    f = sub.add_parser("info", help="configuration, parameter count, progress, best bits/dim")
    f.add_argument("run")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_info)
