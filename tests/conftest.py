"""Test-wide settings and fixtures shared by several test files.

The tests use tiny models, for which a second intra-op thread buys little, while on a shared
machine two OpenMP threads per process can collapse (steps 10-100x slower when another process
is busy). One thread keeps the suite's run time steady; subprocesses inherit it via the
environment.
"""

import os

import pytest
import torch

from helpers import REFERENCE_EPOCHS, TINY_CPU, run_cli_process

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted run of the whole digits set (subprocess, one thread), built once for the
    session: the checkpoint, training-fault, bad-input and evaluation tests read it (or copies)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli_process("train", "--epochs", REFERENCE_EPOCHS, "--out", out, *TINY_CPU)
    assert proc.returncode == 0, proc.stderr
    return out
