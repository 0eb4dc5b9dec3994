"""Non-finite steps: a NaN or inf loss or gradient must never reach the weights, and watching for
one must not make the host wait for the device every step.

Every step's gradient norm (over all parameters, after DDP has averaged the gradients, so every
rank decides alike) is tested on the device, and a non-finite one skips the update. Fused AdamW
and our Muon skip on the device itself (they take the `found_inf` flag GradScaler hands them), so
nothing waits; an optimizer that cannot (AdamW without its fused kernel, on MPS) needs the flag
on the host, one sync per step.
The guard keeps each step's norm on the device and reads them at log time, with the loss: it
prints the skipped steps, and once `train.max_nonfinite` of them came in a row it stops training
with an error naming them. The last checkpoint, written from finite weights, stays as it was.
With fp16 loss scaling, an overflow that GradScaler recovers from by itself (it skips the step
and halves its scale, often several times early in a run) is skipped but not counted
(trainer.step.unrecoverable says which steps count).
"""
from __future__ import annotations

import sys

import torch


class NonFiniteError(Exception):
    """Training produced non-finite losses or gradients too many steps in a row."""


def skips_on_device(optimizers: list[torch.optim.Optimizer]) -> bool:
    """True when every optimizer can skip an update from a flag on the device (fused AdamW, Muon)."""
    return all(getattr(optimizer, "_step_supports_amp_scaling", False) for optimizer in optimizers)


def step_unless(nonfinite: torch.Tensor, optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler) -> None:
    """Update the weights unless `nonfinite` (a 0-dim bool tensor on the device) is true."""
    if skips_on_device(optimizers):
        for optimizer in optimizers:
            # the fused kernel leaves weights, moments and step count untouched when found_inf is 1
            # (with fp16, GradScaler puts its own inf/NaN check in its place)
            optimizer.found_inf = nonfinite.float()
            scaler.step(optimizer)
    elif not nonfinite.item():  # the host sync
        for optimizer in optimizers:
            scaler.step(optimizer)


class NonFiniteGuard:
    def __init__(self, max_in_row: int, verbose: bool = True):
        self.max_in_row = max_in_row
        self.verbose = verbose
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, norm, counted) on the device, not yet read
        self.in_row = 0
        self.skipped = 0  # over the whole run, as of the last read
        self.failed: NonFiniteError | None = None

    def check(self, grad_norm: torch.Tensor, step: int, counted: torch.Tensor | None = None) -> None:
        """Remember `step`'s (1-based) gradient norm and whether it counts as non-finite (default: the
        norm is NaN or inf). No host sync."""
        counted = ~torch.isfinite(grad_norm) if counted is None else counted
        self.pending.append((step, grad_norm.detach(), counted))

    def read(self) -> None:
        """Count the steps checked since the last read, in order (the host sync: call at log time)."""
        if not self.pending:
            return
        norms = torch.stack([norm for _, norm, _ in self.pending]).tolist()
        counted = torch.stack([flag for _, _, flag in self.pending]).tolist()
        for (step, _, _), norm, count in zip(self.pending, norms, counted):
            self._count(norm, step, count)
        self.pending.clear()

    def _count(self, norm: float, step: int, counted: bool) -> None:
        if not counted:
            self.in_row = 0
            return
        self.in_row += 1
        self.skipped += 1
        if self.verbose:
            print(f"step {step}: gradient norm is {norm}, update skipped ({self.in_row} in a row, "
                  f"{self.skipped} in this run)", file=sys.stderr, flush=True)
        if self.in_row == self.max_in_row and self.failed is None:
            self.failed = NonFiniteError(
                f"non-finite loss or gradients at {self.in_row} steps in a row (steps {step - self.in_row + 1} to "
                f"{step}): training stopped and the last checkpoint keeps the last finite weights; lower "
                "train.learning_rate, raise train.warmup_iters, or use dtype=float32"
            )

    def failure(self) -> NonFiniteError | None:
        """The error to stop with once max_in_row steps in a row were skipped (as of the last read), else None."""
        return self.failed
