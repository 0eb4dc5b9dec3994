"""Learning-rate schedule: linear warmup, then cosine decay to min_lr."""
from __future__ import annotations

import math


def learning_rate(step: int, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
