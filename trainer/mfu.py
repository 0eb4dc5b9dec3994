"""Model FLOPs and MFU: how much of the hardware's peak the training step uses.

FLOPs per token follow the PaLM appendix: 6 N for the forward and backward matrix multiplies (N =
parameters without the embedding lookups, with the LM head), plus attention's 3 n_layer n_head T
(score + 2 head_dim): a score costs 2 head_dim for a dot product (12 n_layer n_embd T in all, as
PaLM) or 3 attn_dim for an additive one, the weighted sum of values 2 head_dim. The peak is a table
for known GPUs (dense bf16/fp16 tensor cores); on a CPU a short matmul measures it once (cached on disk).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from model import GPT

# dense bf16 / fp16 tensor-core peak FLOP/s, by a substring of torch.cuda.get_device_name(); the first that
# matches counts, so a name that holds another comes before it ("H100 PCIe" before "H100", "L40" before "L4")
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "A10": 125e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-attention" / "cpu_peak.json"


def flops_per_token(model: GPT) -> float:
    c = model.config
    lookups = [model.wpe.weight] if hasattr(model, "wpe") else []
    if not c.tie_weights:
        lookups.append(model.wte.weight)  # untied: the embedding is only a lookup; the head is the matmul
    n_matmul = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in lookups)
    head_dim = c.n_embd // c.n_head
    score = 2 * head_dim if c.attn_score == "dot" else 3 * (c.attn_dim or head_dim)
    return 6 * n_matmul + 3 * c.n_layer * c.n_head * c.block_size * (score + 2 * head_dim)


def measure_cpu_peak(dtype: torch.dtype, seconds: float = 2.0, size: int = 2048) -> float:
    """Best FLOP/s of a square matmul in `dtype` on this CPU with the current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where the number comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak, f"{name} table"
        return None, f"{name}: not in the peak table"
    if device.type != "cpu":
        return None, f"no peak known for {device.type}"
    machine = platform.processor() or platform.machine()
    key = f"{machine}|{os.cpu_count()}|{torch.get_num_threads()}|{dtype}|{torch.__version__}"
    try:
        cached = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = measure_cpu_peak(dtype)
        with contextlib.suppress(OSError):  # an unwritable cache only costs a second next time
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            CACHE.write_text(json.dumps(cached))
    return cached[key], "measured matmul peak"


def mfu(flops_per_second: float, peak: float, world_size: int) -> float:
    """The FLOP/s of the global batch (every process's tokens) over the peak of all `world_size` devices."""
    return flops_per_second / (peak * world_size)
