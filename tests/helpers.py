"""Helpers shared by the test files.

Bijector checks (exact inverses and log-dets against autograd Jacobians); the command line and
run folders (tiny training arguments, ``realnvp`` in process and in a subprocess, metrics rows);
checkpoint files (tensors to save, ways of damaging a file) and a pickle that runs a command;
data files in their real formats.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from realnvp.bijectors import BatchNorm

# ============================================================================ bijectors


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every parameter away from its (near-identity) initialisation, so that checks of the
    log-det are not checks of the identity map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))
    return module


def jacobian_log_dets(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det ∂fn(x)_i/∂x_i|`` per example, the other examples held fixed: ``(B,)``.

    ``fn`` maps a whole batch to a batch; a per-example Jacobian is taken for each row in turn,
    so batch-dependent pieces (batch norm inside s/t networks) are included exactly.
    """
    out = []
    for i in range(x.shape[0]):
        def f(xi, i=i):
            xb = torch.cat((x[:i], xi.unsqueeze(0), x[i + 1 :]), dim=0)
            return fn(xb)[i].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i], vectorize=False)
        jac = jac.reshape(x[i].numel(), x[i].numel())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def freeze_batch_statistics(module: nn.Module, x: torch.Tensor) -> None:
    """Make every batch norm (the bijector ones and those inside s/t networks) apply, from now
    on, the statistics of the batch ``x`` as constants, and switch them to eval mode.

    In training mode an example's output depends on the rest of the batch through these
    statistics, so a per-example Jacobian is only defined once they are held fixed; the log-det
    is defined with them held fixed too ("the statistics actually used").
    """
    bijector_bns = [m for m in module.modules() if isinstance(m, BatchNorm)]
    torch_bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bijector_bns]
    for m in bijector_bns:
        m.momentum = 1.0
    stats = {}

    def record(m, inputs):
        var, mean = torch.var_mean(inputs[0], dim=[0, 2, 3], correction=0)
        stats[m] = (mean, var)

    hooks = [m.register_forward_pre_hook(record) for m in torch_bns]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    for m, mom in zip(bijector_bns, saved, strict=True):
        m.momentum = mom
        m.eval()
    for m in torch_bns:
        m.running_mean.copy_(stats[m][0])
        m.running_var.copy_(stats[m][1])
        m.eval()


def check_round_trip(layer, x: torch.Tensor, atol: float) -> None:
    y, log_det = layer(x)
    assert log_det.shape == (x.shape[0],)
    x_back, inv_log_det = layer.inverse(y)
    assert x_back.shape == x.shape
    err = (x_back - x).abs().max().item()
    assert err <= atol, f"round trip error {err:.3g} > {atol}"
    torch.testing.assert_close(inv_log_det, -log_det, atol=atol * 10, rtol=1e-4)


def check_log_det(layer, x: torch.Tensor, atol: float = 1e-6) -> None:
    """Compare the layer's log-det with the Jacobian's, in float64, in the layer's current mode.

    In training mode the log-det of the batch is computed first; then every batch norm is frozen
    at that batch's statistics (see :func:`freeze_batch_statistics`) for the Jacobian.
    """
    assert x.dtype == torch.float64
    training = layer.training
    with torch.no_grad():
        _, log_det = layer(x)
    if training:
        freeze_batch_statistics(layer, x)
    expected = jacobian_log_dets(lambda b: layer(b)[0], x)
    torch.testing.assert_close(log_det, expected, atol=atol, rtol=0)
    layer.train(training)


# ============================================================================ command line and runs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
"""The environment of ``realnvp`` subprocesses: one thread, unbuffered output."""

TINY = ["--quiet", "--set", "hidden_channels=4", "--set", "num_blocks=1", "--set", "eval_dequant_samples=1"]
"""``realnvp train`` arguments for a tiny model (4 hidden channels, one residual block)."""

TINY_CPU = [*TINY, "--device", "cpu", "--set", "num_samples=4", "--set", "sample_every=0"]
""":data:`TINY` on the CPU, with 4 samples at the end and no sample pictures during training."""

REFERENCE_EPOCHS = 3
"""Epochs of the ``reference_run`` fixture (conftest.py)."""

posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL, fork and `touch` are POSIX")


def cli(capsys, *argv):
    """``realnvp ARGV`` in this process: its exit code, stdout and stderr."""
    from realnvp.cli import main  # here, so that the bijector tests do not import the CLI

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_process(*argv, timeout=600):
    """``realnvp ARGV`` in a subprocess (:data:`ENV`), its output captured."""
    return subprocess.run([sys.executable, "-m", "realnvp", *map(str, argv)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, check=False)


def one_line(err: str) -> str:
    """The one line of ``err`` (fails if it is not exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def metrics_rows(run: Path) -> list[dict]:
    """The rows of a run's metrics.csv, without the (timing-dependent) ``seconds`` column."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tensorboard"))
    return dst


class Exploit:
    """Unpickling this object creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ============================================================================ checkpoint files


def some_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.w": torch.randn(5, 3, generator=g),
        "model.h": torch.randn(4, generator=g).to(torch.bfloat16),
        "model.d": torch.randn(2, 2, generator=g).double(),
        "model.count": torch.tensor(7),
        "model.flag": torch.tensor(True),
        "optim.0.step": torch.tensor(float(seed)),
        "rng.torch": torch.get_rng_state(),
    }


def same(a: dict, b: dict) -> bool:
    """The same keys, dtypes and values."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def header_of(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def rewrite_header(path: Path, change) -> None:
    """Edit the JSON header of a safetensors file (the data offsets stay valid)."""
    raw = path.read_bytes()
    n, header = header_of(path)
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _flip(offset_of):
    def corrupt(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        i = offset_of(len(raw), header_of(path)[0])
        raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
    return corrupt


def _truncate(length_of):
    def corrupt(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[:length_of(len(raw), header_of(path)[0])])
    return corrupt


def _set_meta(header):
    header["__metadata__"]["meta"] = header["__metadata__"]["meta"].replace('"epoch"', '"epoxh"')


CORRUPTIONS = {
    "empty": _truncate(lambda n, h: 0),
    "truncated-in-length": _truncate(lambda n, h: 5),
    "truncated-in-header": _truncate(lambda n, h: 8 + h // 2),
    "truncated-in-data": _truncate(lambda n, h: (8 + h + n) // 2),
    "last-byte-missing": _truncate(lambda n, h: n - 1),
    "flipped-length": _flip(lambda n, h: 1),
    "flipped-header": _flip(lambda n, h: 8 + h // 3),
    "flipped-first-data-byte": _flip(lambda n, h: 8 + h),
    "flipped-last-byte": _flip(lambda n, h: n - 1),
    "garbage-appended": lambda p: p.write_bytes(p.read_bytes() + b"\0junk"),
    "metadata-edited": lambda p: rewrite_header(p, _set_meta),
    "digest-removed": lambda p: rewrite_header(p, lambda h: h["__metadata__"].pop("sha256")),
    "other-format": lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(format="x")),
    "not-a-checkpoint": lambda p: p.write_text("hello, world\n" * 40),
}
"""Ways of damaging a checkpoint file in place, by name."""


# ============================================================================ data files


def idx3_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_mnist(folder: Path, train: int, test: int) -> Path:
    """Random MNIST in its real files (IDX, uncompressed): ``train`` and ``test`` images with
    their labels, in ``folder``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (prefix, n) in enumerate((("train", train), ("t10k", test))):
        images = random_images(n, (28, 28), seed)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx3_bytes(images))
        labels = rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)
    return folder
