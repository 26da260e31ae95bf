"""The learning rate at each optimizer step: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

from ..config import Config


def learning_rate(cfg: Config, step: int, total_steps: int) -> float:
    """``cfg.lr`` times the warm-up factor ``min(1, (step + 1) / warmup_steps)`` and, with
    ``lr_schedule="cosine"``, the half-cosine ``½(1 + cos(π·p))`` of the fraction ``p`` of the
    steps after the warm-up that are done (``total_steps``: every step of the run), which ends
    at 0 on the last step. ``step`` counts from 0."""
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_schedule == "cosine":
        decay = max(total_steps - cfg.warmup_steps, 1)
        p = min(max(step + 1 - cfg.warmup_steps, 0) / decay, 1.0)
        lr *= 0.5 * (1 + math.cos(math.pi * p))
    return lr
