"""Run configuration as plain data: one flat dataclass, JSON files in ``configs/``, CLI overrides.

Precedence: the built-in defaults (the embedded ``digits`` recipe) < the data set's file in
``configs/`` (chosen by ``--data`` when no ``--config`` is given) < ``--config FILE`` < explicit
command-line options.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .precision import PRECISIONS

CONFIG_DIR = Path(__file__).parent / "configs"
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what was expected."""


@dataclass
class Config:
    # data
    data: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    toy_train_size: int = 20000
    # model: which flow, then its architecture (image keys, vector keys)
    model: str = "realnvp"
    conditional: bool = False
    context_columns: list[int] = field(default_factory=list)
    num_scales: int = 2
    hidden_channels: int = 32
    num_blocks: int = 2
    coupling: str = "affine"
    batch_norm: bool = True
    logit_alpha: float = 0.05
    factor_out: str = "checkerboard"
    dropout: float = 0.0
    steps_per_level: int = 32
    num_couplings: int = 8
    hidden: int = 128
    num_layers: int = 2
    weight_norm: bool = True
    bins: int = 8
    mog_components: int = 0
    spline_bound: float = 5.0
    linear: str = "none"
    ode_solver: str = "dopri5"
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5
    ode_test_rtol: float = 0.0
    ode_test_atol: float = 0.0
    ode_test_solver: str = ""
    ode_step_size: float = 0.05
    ode_t1: float = 0.0
    ode_train_t1: bool = True
    ode_adjoint: bool = False
    trace_estimator: str = "auto"
    kinetic_energy: float = 0.0
    jacobian_norm: float = 0.0
    max_nfe: int = 10000
    # image data: how levels become a density's input (uniform noise or a learned q(u|x))
    dequantization: str = "uniform"
    dequant_steps: int = 4
    dequant_hidden: int = 32
    # optimisation (paper / authors' code)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    l2: float = 5e-5
    grad_clip: float = 100.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    ema_decay: float = 0.0
    precision: str = "fp32"
    # model selection: a fixed validation split carved out of the training split
    valid_size: float = 0.1
    patience: int = 0
    # evaluation and output
    eval_batch_size: int = 256
    eval_dequant_samples: int = 4
    eval_importance_samples: int = 0
    sample_every: int = 1
    num_samples: int = 64
    sample_temperature: float = 0.7
    max_bad_steps: int = 10
    # run
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    threads: int = 0
    source: str = "built-in defaults"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Config:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        return _coerce(dataclasses.replace(self, **changes))

    @classmethod
    def from_dict(cls, d: dict, base: Config | None = None) -> Config:
        if not isinstance(d, dict):
            raise ConfigError("a configuration must be a JSON object")
        return (base or cls()).replace(**d)


#: What each key means (``realnvp train --list-keys`` prints it with the defaults).
HELP = {
    "data": "data set: digits, mnist-5k, mnist, fashion-mnist, cifar10, imagenet32, imagenet64, celeba, "
            "lsun-bedroom|tower|church, folder, tabular, toy:NAME",
    "data_dir": "where the data set's files are (default $REALNVP_DATA_DIR/NAME or data/NAME)",
    "download": "download missing files (cifar10, mnist, fashion-mnist)",
    "image_size": "side of the square images of the folder data set",
    "toy_train_size": "toy:NAME data: points the generator draws for the training split (the "
                      "validation carve included; the test split is always 5000)",
    "model": "the flow: realnvp (images and vectors), glow (images), maf, iaf, nsf-coupling, "
             "nsf-autoregressive (vectors), ffjord (images and vectors)",
    "conditional": "class-conditional model p(x | label) on a labelled data set (the image "
                   "models: realnvp, glow, ffjord; sample with --label)",
    "context_columns": "tabular data: the columns (0-based) that are the context of a conditional "
                       "density p(other columns | these); sample with --context",
    "num_scales": "image models: scales of the multi-scale architecture (glow: levels)",
    "hidden_channels": "image models: channels of the s/t networks (realnvp: at the first scale)",
    "num_blocks": "realnvp image model: residual blocks per s/t network; ffjord: CNFs per scale "
                  "(vectors: in all)",
    "coupling": "realnvp, glow: affine (RealNVP) or additive (NICE) couplings",
    "batch_norm": "batch normalisation as a bijector between couplings and in the s/t networks",
    "logit_alpha": "image model: the logit transform's margin α in logit(α + (1 − 2α)·y)",
    "factor_out": "image model: what leaves the flow after each scale but the last: checkerboard "
                  "(one colour of the squeezed tensor, the authors' code) or channels (the first "
                  "half of the channels)",
    "dropout": "image models realnvp and glow: dropout probability in the coupling networks "
               "(realnvp: inside each residual block; Flow++'s regulariser for small data; 0: none; "
               "the other models have none, as they have no hidden_channels)",
    "steps_per_level": "glow: steps (actnorm, 1x1 convolution, coupling) per level",
    "num_couplings": "vector models: layers of the flow (couplings or autoregressive layers)",
    "hidden": "vector models: width of the s/t MLPs and MADEs",
    "num_layers": "vector models: hidden layers of the s/t MLPs and MADEs",
    "weight_norm": "realnvp and nsf-coupling vector models: weight-normalised MLP layers (false: "
                   "plain nn.Linear)",
    "bins": "nsf models: bins of the rational-quadratic splines",
    "mog_components": "maf, nsf-autoregressive: a MADE MoG base density of this many Gaussians per "
                      "conditional (the MAF paper's MAF MoG: 10); 0: the standard normal",
    "spline_bound": "nsf models: the splines act on [-B, B] (identity outside)",
    "linear": "nsf-coupling: lu, an LU-parametrised invertible linear map of the features before "
              "every coupling (the NSF code's), or none",
    "ode_solver": "ffjord: torchdiffeq's solver (dopri5, the reference code's; or a fixed-grid one, rk4 ...)",
    "ode_rtol": "ffjord: the solver's relative tolerance (the reference code's 1e-5)",
    "ode_atol": "ffjord: the solver's absolute tolerance (the reference code's 1e-5)",
    "ode_test_rtol": "ffjord: the relative tolerance in evaluation, sampling and validation (the reference "
                     "code's --test_rtol; 0: ode_rtol)",
    "ode_test_atol": "ffjord: the absolute tolerance in evaluation, sampling and validation (the reference "
                     "code's --test_atol; 0: ode_atol)",
    "ode_test_solver": "ffjord: the solver in evaluation, sampling and validation (the reference code's "
                       "--test_solver; empty: ode_solver)",
    "ode_step_size": "ffjord: the fixed-grid solvers' step, a fraction of the integration time (the "
                     "reference code's --step_size; 0.25: four steps)",
    "ode_t1": "ffjord: the integration time T of each CNF (the reference code's --time_length; 0: the "
              "model's, 0.5 for vectors as in its toy runs, 1.0 for images)",
    "ode_train_t1": "ffjord: learn T (the reference code's --train_T); RNODE keeps it fixed",
    "ode_adjoint": "ffjord: back-propagate with the adjoint method (constant memory, slower)",
    "trace_estimator": "ffjord: exact, hutchinson (Rademacher noise) or auto (exact for D <= 8, "
                       "and in evaluation for D <= 32)",
    "kinetic_energy": "ffjord: weight of RNODE's kinetic energy ∫‖f‖² dt in the loss (0: off)",
    "jacobian_norm": "ffjord: weight of RNODE's Jacobian Frobenius norm ∫‖εᵀ∂f/∂z‖² dt (0: off)",
    "max_nfe": "ffjord: function evaluations one ODE solve may take before it stops with an error",
    "dequantization": "image data: uniform noise (the paper's bound) or variational, a learned "
                      "flow q(u|x) trained with the model (Flow++)",
    "dequant_steps": "variational dequantizer: checkerboard couplings after its x-conditioned "
                     "elementwise one",
    "dequant_hidden": "variational dequantizer: channels of its networks",
    "epochs": "passes over the training split",
    "batch_size": "examples per step and process",
    "lr": "Adam's learning rate",
    "betas": "Adam's (β1, β2)",
    "eps": "Adam's ε",
    "l2": "× Σθ² over weight-norm magnitudes and the checkerboard couplings' rescales, added to "
          "the NLL in nats per example (the authors' cost)",
    "grad_clip": "global norm the gradient of that cost is clipped to",
    "warmup_steps": "steps of linear learning-rate warm-up (0: none)",
    "lr_schedule": "constant, or cosine: half-cosine decay to 0 over the steps after the warm-up",
    "ema_decay": "decay of the moving average of the weights that is evaluated (0: none)",
    "precision": "fp32, or bf16 autocast of the s/t networks",
    "valid_size": "validation split carved from the training split: < 1 a fraction, >= 1 a "
                  "number of examples, 0 none (then nothing is selected: the last weights are the "
                  "model, and the test split is only monitored)",
    "patience": "stop after this many epochs without a better validation score (0: never)",
    "eval_batch_size": "examples per evaluation batch",
    "eval_dequant_samples": "dequantization noise draws of the final evaluation",
    "eval_importance_samples": "draws of the final importance-weighted bound (0: as many)",
    "sample_every": "epochs between sample pictures (0: never)",
    "num_samples": "samples in each picture",
    "sample_temperature": "the prior's standard deviation for pictures",
    "max_bad_steps": "non-finite steps in a row before rolling back to the last checkpoint",
    "seed": "initialisation, batch order and noise",
    "device": "auto, cpu, cuda or mps",
    "num_workers": "DataLoader worker processes",
    "threads": "intra-op CPU threads (0: PyTorch's default; 1 is steadier on a busy machine)",
    "source": "where the configuration came from (set by the loader)",
    "notes": "free text: where a recipe's numbers come from",
}


def describe_keys() -> str:
    """Every key, its default and its meaning, one per line."""
    default = Config()
    return "\n".join(f"{f.name:<24}{json.dumps(getattr(default, f.name)):<22}{HELP[f.name]}"
                     for f in dataclasses.fields(Config))


DEQUANTIZATIONS = ("uniform", "variational")
MODELS = ("realnvp", "glow", "maf", "iaf", "nsf-coupling", "nsf-autoregressive", "ffjord")
ODE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "rk4",
               "explicit_adams", "implicit_adams")
_CHOICES = {"model": MODELS, "coupling": ("affine", "additive"),
            "factor_out": ("checkerboard", "channels"), "lr_schedule": ("constant", "cosine"),
            "precision": PRECISIONS, "device": DEVICES, "ode_solver": ODE_SOLVERS,
            "ode_test_solver": ("",) + ODE_SOLVERS,
            "trace_estimator": ("auto", "exact", "hutchinson"),
            "dequantization": DEQUANTIZATIONS, "linear": ("none", "lu")}
_FINITE_POSITIVE = (lambda v: 0 < v < math.inf, "a finite number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
#: Every range check but the positive integers': (key, test, what is expected).
_RANGES = [
    ("lr", *_FINITE_POSITIVE), ("eps", *_FINITE_POSITIVE), ("grad_clip", *_FINITE_POSITIVE),
    ("spline_bound", *_FINITE_POSITIVE),
    ("ode_rtol", *_FINITE_POSITIVE), ("ode_atol", *_FINITE_POSITIVE),
    ("ode_test_rtol", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("ode_test_atol", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("ode_step_size", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("ode_t1", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("kinetic_energy", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("jacobian_norm", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("l2", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("sample_temperature", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("logit_alpha", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("valid_size", lambda v: v == 0 or 0 < v < 1 or (v >= 1 and float(v).is_integer()),
     "a fraction in [0, 1) or a whole number of examples"),
    ("warmup_steps", *_NON_NEGATIVE), ("sample_every", *_NON_NEGATIVE),
    ("num_workers", *_NON_NEGATIVE), ("threads", *_NON_NEGATIVE), ("patience", *_NON_NEGATIVE),
    ("eval_importance_samples", *_NON_NEGATIVE),
    ("mog_components", *_NON_NEGATIVE),
]
_POSITIVE = ("num_scales", "steps_per_level", "bins", "hidden_channels", "num_blocks",
             "num_couplings", "hidden", "epochs", "batch_size", "eval_batch_size",
             "eval_dequant_samples", "num_samples", "max_bad_steps", "max_nfe", "dequant_steps",
             "dequant_hidden", "toy_train_size")


def _coerce(cfg: Config) -> Config:
    """Check types and ranges; turn JSON lists back into tuples."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = getattr(Config, f.name, None) if f.default_factory is dataclasses.MISSING else []
        if f.name == "betas":
            if not (isinstance(value, list | tuple) and len(value) == 2):
                raise ConfigError(f"betas must be two numbers, got {value!r}")
            if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in value) \
                    or not all(0 <= b < 1 for b in value):
                raise ConfigError(f"betas must be two numbers in [0, 1), got {value!r}")
            setattr(cfg, f.name, tuple(float(b) for b in value))
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            setattr(cfg, f.name, float(value))
    columns = cfg.context_columns
    if not isinstance(columns, list | tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in columns) \
            or len(set(columns)) != len(columns):
        raise ConfigError(f"context_columns must be a list of distinct column numbers >= 0, got {columns!r}")
    cfg.context_columns = list(columns)
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            names = ", ".join(a or '""' for a in allowed)
            raise ConfigError(f"{key} must be one of {names}, got {getattr(cfg, key)!r}")
    for key in _POSITIVE:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key, ok, expected in _RANGES:
        if not ok(getattr(cfg, key)):
            raise ConfigError(f"{key} must be {expected}, got {getattr(cfg, key)!r}")
    if cfg.image_size is not None and (isinstance(cfg.image_size, bool)
                                       or not isinstance(cfg.image_size, int) or cfg.image_size < 1):
        raise ConfigError(f"image_size must be an integer >= 1, got {cfg.image_size!r}")
    return cfg


def config_file_for(data: str) -> Path | None:
    """The file in ``configs/`` holding the recipe for data set ``data``, if there is one."""
    stem = ("toy" if data.startswith("toy:") else "lsun" if data.startswith("lsun-")
            else "mnist" if data == "mnist-5k" else data)  # mnist.json was tuned on mnist-5k
    path = CONFIG_DIR / f"{stem}.json"
    return path if path.is_file() else None


def read_config_file(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        named = CONFIG_DIR / f"{path.name}.json"
        if named.is_file():  # `--config cifar10` names a shipped recipe
            path = named
        else:
            raise ConfigError(f"config file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    d.setdefault("source", str(path))
    return Config.from_dict(d, base)
