"""Checkpoints that are safe to load and never half-written.

One ``.safetensors`` file holds every tensor (weights, the optimizer's moments, the RNG state) and,
in its header, JSON metadata and a SHA-256 digest of the tensors and the metadata. Nothing is
unpickled on load: a pickle or ``torch.save`` file is recognised and refused.

Writes go to a private staging directory next to the target (``.NAME.HOST.PID.XXXX.tmp``), are
fsynced, then renamed over the target, so a crash at any moment leaves either the old file or the
new one under the target's name (the target never disappears: the previous file is kept as
``*.prev`` through a hard link, where the file system has them). A previous file that does not
verify is not rotated into ``*.prev``, so a corrupt checkpoint never pushes out the last good one.
Nothing a killed write leaves behind looks like a checkpoint, and the next save of the same
checkpoint removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .atomic import default_mode, fsync_dir, fsync_file

FORMAT = "realnvp-checkpoint-2"  # digest over tensors and metadata
FORMATS = (FORMAT, "realnvp-checkpoint-1")  # readable; version 1's digest covers tensors only

#: files this process has written or verified: str(path) -> (inode, size, mtime_ns)
_verified: dict[str, tuple[int, int, int]] = {}


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


def digest(tensors: dict[str, torch.Tensor], meta: str | None = None) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted order, then (format
    2) over the metadata string."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if meta is not None:
        h.update(b"meta|" + meta.encode())
    return h.hexdigest()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_pattern(path: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[^.]*\.tmp$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def stale_temp_files(path: str | Path) -> list[Path]:
    """Staging directories (or temporary files) of ``path`` left behind by processes of this host
    that no longer run."""
    path = Path(path)
    pattern, host, out = _temp_pattern(path), _host(), []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return out
    for name in names:
        m = pattern.match(name)
        if m and m["host"] == host and not _alive(int(m["pid"])):
            out.append(path.parent / name)
    return out


def previous(path: str | Path) -> Path:
    """Where :func:`save` keeps the file it replaced: ``NAME.prev``."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".prev")


def exists(path: str | Path) -> bool:
    """Whether :func:`load_with_fallback` has a file to try: ``path`` or its previous one."""
    return Path(path).exists() or previous(path).exists()


def _is_good(path: Path) -> bool:
    """Whether the existing checkpoint ``path`` verifies (cheap when this process wrote it)."""
    stamp = _stamp(path)
    if stamp is not None and _verified.get(str(path)) == stamp:
        return True
    try:
        load(path)
    except CheckpointError:
        return False
    return True


def _keep_previous(path: Path, prev: Path, staging: Path) -> None:
    """Make ``prev`` the current ``path`` while ``path`` stays in place (a hard link, made in
    ``staging``), or, where links are not available, move ``path`` to ``prev``."""
    link = staging / "previous"
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, prev)
        return
    os.replace(link, prev)  # a no-op if prev already is this very file (staging is removed anyway)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict, keep_previous: bool = True) -> None:
    """Atomically write ``tensors`` and JSON-able ``meta`` to ``path``.

    Refuses (``CheckpointError``) to write a checkpoint with NaN or infinite values; the existing
    file is then left as it was. With ``keep_previous`` the file being replaced is kept as
    ``path.prev`` if it verifies.

    The new file is written in a private staging directory next to ``path`` (so whatever a kill
    leaves behind, safetensors' own temporary files included, stays in there), fsynced, and
    renamed over ``path``; the next save removes staging directories of processes that are gone.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    bad = [k for k, v in tensors.items()
           if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write a checkpoint with non-finite values in {bad[0]}")
    try:
        meta_text = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata is not plain JSON: {e}") from e
    header = {"format": FORMAT, "meta": meta_text, "sha256": digest(tensors, meta_text)}
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_files(path):
        _remove(stale)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp",
                                    dir=path.parent))
    try:
        tmp = staging / "checkpoint.partial"
        save_file(tensors, str(tmp), metadata=header)
        fsync_file(tmp)
        os.chmod(tmp, default_mode())  # as the run's other files, not the staging folder's 0600
        if keep_previous and path.exists() and _is_good(path):
            _keep_previous(path, previous(path), staging)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stamp = _stamp(path)
    if stamp is not None:
        _verified[str(path)] = stamp


def _looks_like_a_pickle(path: Path) -> str | None:
    """What a file that safetensors cannot parse is, if it is a pickle or a torch.save archive.

    Only consulted after parsing failed: the first bytes of a safetensors file are its header
    length, which can start with any byte.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return None
    if head == b"PK":
        return "a zip archive (torch.save)"
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle (torch.save / pickle)"
    return None


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`, verifying its digest: ``(tensors, meta)``.

    Every problem (missing, truncated, corrupt, a pickle, tampered metadata, non-finite values)
    raises :class:`CheckpointError` with a one-line message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    stamp = _stamp(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        what = _looks_like_a_pickle(path)
        if what:
            raise CheckpointError(f"{path} is {what}, not a safetensors checkpoint; refusing to load "
                                  "it (unpickling can run arbitrary code)") from e
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {reason}") from e
    fmt = header.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{path} is not a realnvp checkpoint (format {fmt!r})")
    meta_text = header.get("meta")
    if not isinstance(meta_text, str):
        raise CheckpointError(f"corrupt metadata in checkpoint {path}")
    expected = digest(tensors, meta_text if fmt == FORMAT else None)
    if expected != header.get("sha256"):
        raise CheckpointError(f"checksum mismatch in {path}: the file is corrupt")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt metadata in checkpoint {path}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt metadata in checkpoint {path}: expected a JSON object")
    bad = [k for k, v in tensors.items()
           if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite values in {bad[0]}")
    if stamp is not None and stamp == _stamp(path):
        _verified[str(path)] = stamp
    return tensors, meta


def load_with_fallback(path: str | Path, warn=print) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """:func:`load` ``path``; if it is missing or corrupt, fall back to the ``.prev`` file written
    before it (with a warning). If both fail, the error names both."""
    path = Path(path)
    try:
        return (*load(path), path)
    except CheckpointError as e:
        prev = previous(path)
        if not prev.is_file():
            raise
        try:
            result = (*load(prev), prev)
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; the previous checkpoint is unusable too: {e2}") from e2
        warn(f"warning: {e}; using the previous checkpoint {prev.name}")
        return result


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
    try:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in meta.get("scalars", {}).items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
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

    try:
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        kind, keys, *rest = meta["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))  # noqa: NPY002
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"corrupt random-number state in checkpoint: {e}") from e


def _plain(x):
    """Tuples (and numpy scalars) to JSON-able lists and numbers."""
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x
