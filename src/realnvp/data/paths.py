"""Where data lives on disk, and helpers for the 'file not found' messages."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_ROOT_ENV = "REALNVP_DATA_DIR"


def default_data_dir(name: str) -> Path:
    """``$REALNVP_DATA_DIR/<name>`` (default ``./data/<name>``), used when ``data_dir`` is None."""
    safe = name.replace(":", "-")
    return Path(os.environ.get(DATA_ROOT_ENV, "data")) / safe


def resolve_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir) if data_dir is not None else default_data_dir(name)


def missing_message(name: str, where: Path, looked_for: Iterable[str], can_download: bool) -> str:
    """One line: what was looked for where, and how to get it."""
    looked = ", ".join(looked_for)
    hint = (
        "pass --download (load_dataset(..., download=True)) to fetch it"
        if can_download
        else "download it yourself and point --data-dir (data_dir) at it"
    )
    state = "" if where.exists() else ", which does not exist"
    return f"{name}: data not found in {where}{state} (looked for {looked}); {hint}"
