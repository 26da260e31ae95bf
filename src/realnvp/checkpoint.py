"""Checkpoints that are safe to load and never half-written.

One ``.safetensors`` file holds every tensor (weights, the optimizer's moments, the RNG state) and,
in its header, JSON metadata and a SHA-256 digest of the tensors. Nothing is unpickled on load.
Writes go to a temporary file in the same directory, are fsynced, then renamed over the target,
so a crash leaves either the old file or the new one; the previous file is kept as ``*.prev``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FORMAT = "realnvp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict, keep_previous: bool = True) -> None:
    """Atomically write ``tensors`` and JSON-able ``meta`` to ``path``.

    Refuses (``CheckpointError``) to write a checkpoint with NaN or infinite values.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write a checkpoint with non-finite values in {bad[0]}")
    header = {"format": FORMAT, "meta": json.dumps(meta), "sha256": digest(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_suffix(path.suffix + ".prev"))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`, verifying its digest: ``(tensors, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a realnvp checkpoint (format {header.get('format')!r})")
    if digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"checksum mismatch in {path}: the file is corrupt")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt metadata in checkpoint {path}") from e
    return tensors, meta


def load_with_fallback(path: str | Path, warn=print) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """:func:`load` ``path``; if it is corrupt, fall back to the ``.prev`` file written before it."""
    path = Path(path)
    try:
        return (*load(path), path)
    except CheckpointError as e:
        prev = path.with_suffix(path.suffix + ".prev")
        if not prev.is_file():
            raise
        warn(f"warning: {e}; using the previous checkpoint {prev.name}")
        return (*load(prev), prev)


# --- optimizer and RNG state as tensors + JSON (no pickle) -------------------------------------


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state does not fit this model: {e}") from e


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    import random

    import numpy as np

    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what users seed
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
        "python": _plain(random.getstate()),
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, *rest = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(x):
    """Tuples (and numpy scalars) to JSON-able lists and numbers."""
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x
