"""One optimizer step, the unit train.py repeats and bench/ times: the micro-batches (forward under
autocast, backward), unscaling, the gradient norm and its non-finite check, clipping, the update.

Nothing here reads a value back to the host (on CUDA and CPU, whose AdamW is fused): the loss and
the gradient norm stay on the device until train.py logs them.
"""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.nonfinite import NonFiniteGuard, step_unless
from trainer.runtime import autocast, to_device


def unrecoverable(loss: torch.Tensor, nonfinite: torch.Tensor, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The flag the non-finite guard counts: a non-finite gradient norm (`nonfinite`), except, with
    fp16 loss scaling, an overflow the scaler recovers from by itself (it skips the step and halves
    its scale). That leaves a non-finite loss, which no scale explains, and an overflow at a scale
    of 1 or less, where the gradients overflow unscaled."""
    if not scaler.is_enabled():
        return nonfinite
    scale = scaler._get_scale_async()  # the scale this step's loss was multiplied by, still on the device
    return ~torch.isfinite(loss) | (nonfinite & (scale <= 1))


def train_step(step_model: torch.nn.Module, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
               scaler: torch.amp.GradScaler, guard: NonFiniteGuard, x: torch.Tensor, y: torch.Tensor, step: int,
               grad_accum: int, grad_clip: float, dtype: torch.dtype, device: torch.device,
               ddp: DistributedDataParallel | None = None) -> torch.Tensor:
    """One optimizer step on this rank's batch x, y (b, T): returns the step's mean loss on the device.

    step_model runs the forward pass (the model, compiled or DDP-wrapped); model owns the
    parameters; ddp, under DDP, is the wrapper whose gradient all-reduce waits for the last
    micro-batch. `step` is the 1-based step the guard names when it skips one.
    """
    step_loss = torch.zeros((), device=device)
    for micro, (micro_x, micro_y) in enumerate(zip(x.chunk(grad_accum), y.chunk(grad_accum))):
        if ddp is not None:  # average gradients across ranks once, after the last micro-batch
            ddp.require_backward_grad_sync = micro == grad_accum - 1
        with autocast(device, dtype):
            _, loss = step_model(to_device(micro_x, device), to_device(micro_y, device))
        loss = loss / grad_accum
        scaler.scale(loss).backward()
        step_loss += loss.detach()
    for optimizer in optimizers:
        scaler.unscale_(optimizer)  # true gradients (a no-op unless fp16 scales the loss)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # NaN or inf when the loss or any gradient is
    nonfinite = ~torch.isfinite(grad_norm)
    guard.check(grad_norm, step, unrecoverable(step_loss, nonfinite, scaler))
    if grad_clip > 0:  # scale every gradient by min(1, grad_clip / grad_norm)
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    step_unless(nonfinite, optimizers, scaler)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return step_loss


def loss_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """fp16 needs loss scaling (its gradients underflow otherwise); bf16 and fp32 do not: disabled."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
