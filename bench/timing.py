"""One timed training step, the unit the training benchmarks measure: the forward pass under
autocast, the backward pass, gradient clipping and every optimizer's update."""
from __future__ import annotations

import time

import torch

from trainer.runtime import autocast


def timed_training_step(step_model, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], x: torch.Tensor,
                        y: torch.Tensor, dtype: torch.dtype, grad_clip: float) -> float:
    """Seconds of one step of `step_model` (the model itself, or its compiled form) on (x, y)."""
    started = time.perf_counter()
    with autocast(x.device, dtype):
        _, loss = step_model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started
