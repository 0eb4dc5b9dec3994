"""Non-finite steps: a NaN or inf loss or gradient must never reach the weights.

Every step's gradient norm (over all parameters, after DDP has averaged the gradients, so every
rank decides alike) is checked before the optimizer runs. A non-finite one skips the update and
is counted; `train.max_nonfinite` of them in a row stop training with an error naming the steps,
and the last checkpoint, written from finite weights, stays as it was. Reading that one number
is the single host sync of a training step: the price of never applying a broken update.
"""
from __future__ import annotations

import math
import sys

import torch


class NonFiniteError(Exception):
    """Training produced non-finite losses or gradients too many steps in a row."""


class NonFiniteGuard:
    def __init__(self, max_in_row: int, verbose: bool = True):
        self.max_in_row = max_in_row
        self.verbose = verbose
        self.in_row = 0
        self.skipped = 0  # over the whole run
        self.last_step = 0

    def update_allowed(self, grad_norm: torch.Tensor, step: int) -> bool:
        """True when the gradients of `step` (1-based) are finite; otherwise count a skipped step."""
        norm = float(grad_norm)  # the host sync
        if math.isfinite(norm):
            self.in_row = 0
            return True
        self.in_row += 1
        self.skipped += 1
        self.last_step = step
        if self.verbose:
            print(f"step {step}: gradient norm is {norm}, update skipped ({self.in_row} in a row, "
                  f"{self.skipped} in this run)", file=sys.stderr, flush=True)
        return False

    def failure(self) -> NonFiniteError | None:
        """The error to stop with once max_in_row steps in a row were skipped, else None."""
        if self.in_row < self.max_in_row:
            return None
        return NonFiniteError(
            f"non-finite loss or gradients at {self.in_row} steps in a row (steps {self.last_step - self.in_row + 1} to "
            f"{self.last_step}): training stopped and the last checkpoint keeps the last finite weights; lower "
            "train.learning_rate, raise train.warmup_iters, or use dtype=float32"
        )
