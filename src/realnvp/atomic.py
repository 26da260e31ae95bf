"""Writing files so that a crash at any moment leaves either the old file or the new one.

:func:`replacing` is the one way the package writes a file that a reader may open at any time
(run descriptions, ``metrics.csv``, ``eval.json``, pictures, command outputs, downloads; the
checkpoints build their rotation on the same pieces): the data goes to a uniquely named
temporary file next to the target, is flushed to disk, and is renamed over the target, and the
directory entry is synced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that cannot sync directories
        pass
    finally:
        os.close(fd)


def default_mode() -> int:
    """The mode ``open()`` would give a new file here: ``0o666`` less the umask (temporary files
    are made ``0o600``; the files they become should not differ from the others of a run)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`replacing`'s temporary files (left by a crash)."""
    return name.startswith(".") and name.endswith(".tmp")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """``with replacing(path) as tmp: <write tmp>``: on a normal exit ``tmp`` is synced and
    renamed over ``path``; on an exception it is removed and ``path`` is left as it was.

    The parent directory is created if needed. ``tmp`` is hidden (``.NAME.XXXX.tmp``) and in the
    same directory, so the rename is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` by a file holding ``text`` (UTF-8, newlines as given)."""
    with replacing(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
    return Path(path)
