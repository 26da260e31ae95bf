"""Test-wide settings.

The tests use tiny models, for which a second intra-op thread buys little, while on a shared
machine two OpenMP threads per process can collapse (steps 10-100x slower when another process
is busy). One thread keeps the suite's run time steady; subprocesses inherit it via the
environment.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
