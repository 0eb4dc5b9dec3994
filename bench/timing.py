"""train.py's training step, timed: the unit the training benchmarks measure. It is the real step
(train.py: train_step: host-to-device copy, forward under autocast, backward, loss scaling,
the gradient norm and its non-finite check, clipping, every optimizer's update), with the device
synchronised before and after, so a GPU's queued work is inside the time."""
from __future__ import annotations

import time

import torch

from train import train_step
from trainer.config import TrainConfig
from trainer.guards import NonFiniteGuard


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedSteps:
    """Steps of one model, each returning its seconds; the loss scaler and the guard live across steps."""

    def __init__(self, step_model, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                 dtype: torch.dtype, device: torch.device, tc: TrainConfig | None = None):
        self.step_model, self.model, self.optimizers = step_model, model, optimizers
        self.dtype, self.device, self.tc = dtype, device, tc or TrainConfig()  # its grad_clip and grad_accum
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # as train.py's
        self.guard = NonFiniteGuard(max_in_row=10, verbose=False)
        self.steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Seconds of one step on the host batch x, y (b, T)."""
        self.steps += 1
        synchronize(self.device)
        started = time.perf_counter()
        _, grad_norm, counted = train_step(self.model, self.step_model, self.optimizers, self.scaler, x, y, self.tc,
                                           self.dtype)
        self.guard.check(self.steps, grad_norm, counted)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        self.guard.read()  # outside the time, as train.py reads at log time only
        return seconds
