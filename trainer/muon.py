"""Muon (Keller Jordan's, as in modded-nanogpt and nanochat): momentum, then each 2-D update
orthogonalised by Newton-Schulz iterations, its size matched to AdamW's (Moonshot's "match_rms_adamw",
0.2 * sqrt(max(A, B))) so one learning rate and one schedule serve both optimizers.

Ours rather than torch.optim.Muon: torch's always orthogonalises in bf16, ~100x slower than fp32 where
bf16 is only emulated (CPUs without AVX-512 BF16 or AMX, GPUs older than Ampere: every step took
seconds), while ours runs in the `ns_dtype` newton_schulz_dtype picks per device; and torch's cannot
skip a step from a flag on the device, so a non-finite gradient cost a host sync every step, while
ours takes GradScaler's `found_inf` like fused AdamW (trainer/guards.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from common.device import native_bf16

# the quintic's coefficients, chosen for the steepest slope at 0: five iterations bring every
# singular value into roughly [0.7, 1.2], which trains as well as exact orthogonalisation
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies in it natively (precise enough to orthogonalise roughly), else fp32."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def orthogonalise(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """The matrix nearest to `update` with all singular values ~1 (U V^T of its SVD, roughly),
    by `steps` Newton-Schulz iterations of X <- aX + (bA + cA^2)X with A = X X^T."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the wide side: A is then the smaller Gram matrix
    x = x / x.norm().clamp(min=1e-7)  # spectral norm <= Frobenius norm = 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; `found_inf`, set on it as GradScaler does, skips the step on the device when nonzero."""

    _step_supports_amp_scaling = True  # GradScaler hands the flag over instead of syncing

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.95, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_steps": ns_steps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes matrices only, got a parameter of shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        grad_scale = getattr(self, "grad_scale", None)  # set when the gradients are still scaled (fp16)
        found_inf = getattr(self, "found_inf", None)
        skip = None if found_inf is None else found_inf.bool()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if grad_scale is None else p.grad / grad_scale
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                new_buf = buf.lerp(grad, 1 - momentum)
                nesterov = grad.lerp(new_buf, momentum)  # look ahead along the momentum
                update = orthogonalise(nesterov, group["ns_steps"], self.ns_dtype).to(p.dtype)
                scale = lr * 0.2 * math.sqrt(max(p.shape))  # AdamW's update RMS (~0.2 lr) for any shape
                new_p = p * (1 - lr * group["weight_decay"]) - scale * update  # decoupled weight decay
                if skip is None:
                    buf.copy_(new_buf)
                    p.copy_(new_p)
                else:  # a non-finite gradient leaves weights and momentum as they were, with no host sync
                    buf.copy_(torch.where(skip, buf, new_buf))
                    p.copy_(torch.where(skip, p, new_p))
