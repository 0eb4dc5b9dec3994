"""Learning-rate schedule: linear warmup, then cosine decay to min_lr.

`progress` is how far the decay has come, from 0 to 1. A run has a step budget
(train.lr_decay_iters, normally train.max_iters) and may have a wall-clock budget too
(train.max_seconds): the decay follows whichever of the two is nearer its end, so a run on a
slow machine still ends its decay when its time runs out, and a fast one when its steps do.
"""
from __future__ import annotations

import math


def learning_rate(step: int, max_lr: float, min_lr: float, warmup_iters: int, progress: float) -> float:
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def decay_progress(step: int, warmup_iters: int, decay_iters: int, seconds: float = 0.0, max_seconds: float = 0.0) -> float:
    """The further along of the step budget (after warmup) and the time budget (0 = none)."""
    by_steps = (step - warmup_iters) / max(1, decay_iters - warmup_iters)
    return max(by_steps, seconds / max_seconds) if max_seconds else by_steps
