"""train.py's training step, timed: the unit the training benchmarks measure. It is the real step
(trainer.step.train_step: host-to-device copy, forward under autocast, backward, loss scaling,
the gradient norm and its non-finite check, clipping, every optimizer's update), with the device
synchronised before and after, so a GPU's queued work is inside the time."""
from __future__ import annotations

import time

import torch

from trainer.nonfinite import NonFiniteGuard
from trainer.step import loss_scaler, train_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedSteps:
    """Steps of one model, each returning its seconds; the loss scaler and the guard live across steps."""

    def __init__(self, step_model, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                 dtype: torch.dtype, device: torch.device, grad_clip: float = 1.0, grad_accum: int = 1):
        self.step_model, self.model, self.optimizers = step_model, model, optimizers
        self.dtype, self.device, self.grad_clip, self.grad_accum = dtype, device, grad_clip, grad_accum
        self.scaler = loss_scaler(device, dtype)
        self.guard = NonFiniteGuard(max_in_row=10, verbose=False)
        self.steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Seconds of one step on the host batch x, y (b, T)."""
        self.steps += 1
        synchronize(self.device)
        started = time.perf_counter()
        train_step(self.step_model, self.model, self.optimizers, self.scaler, self.guard, x, y, self.steps,
                   self.grad_accum, self.grad_clip, self.dtype, self.device)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        self.guard.read()  # outside the time, as train.py reads at log time only
        return seconds
