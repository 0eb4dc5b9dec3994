"""Learning-rate schedule: linear warmup, then cosine decay to min_lr.

`progress` is how far the decay has come, from 0 to 1: by steps normally, by wall-clock time
when the run has a time budget (train.max_seconds).
"""
from __future__ import annotations

import math


def learning_rate(step: int, max_lr: float, min_lr: float, warmup_iters: int, progress: float) -> float:
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def decay_progress(step: int, warmup_iters: int, decay_iters: int) -> float:
    return (step - warmup_iters) / max(1, decay_iters - warmup_iters)
