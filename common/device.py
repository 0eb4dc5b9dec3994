"""Where and in what precision tensors live: `device` and `dtype` settings resolved against the
machine (auto: CUDA, else MPS, else CPU; bf16 where the hardware computes in it natively), the
autocast context of the forward pass, and host -> device copies."""
from __future__ import annotations

import contextlib
import sys

import torch

from common.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name: str) -> torch.device:
    """The device `name` says (auto: CUDA, else MPS, else CPU). On CUDA, float32 matrix multiplies
    may then use TF32 tensor cores (matmul precision "high"): fp32 training, fp32 sampling and the
    attention report run several times faster on Ampere and newer GPUs, with a 10-bit mantissa
    in the products and fp32 sums. CPU arithmetic is left exactly as it was."""
    device = pick_device(name)
    if device.type == "cuda":
        # the CUDA switch alone (not torch.set_float32_matmul_precision, which also changes oneDNN's CPU matmuls)
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def pick_device(name: str) -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r} must be one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible to torch {torch.__version__}: use device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this machine has no MPS backend: use device=cpu or auto")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX-512 BF16 or AMX), where bf16
    autocast is faster than fp32; without them bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_supports_bf16() -> bool:
    """True when the GPU computes in bf16 natively (Ampere and newer). torch's default also counts
    GPUs that only emulate it (V100, T4), where bf16 is slow and fp16 with loss scaling is right."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def native_bf16(device: torch.device) -> bool:
    """True where `device` multiplies in bf16 natively: CUDA GPUs of Ampere and newer, CPUs with bf16
    instructions. Elsewhere (older GPUs, other CPUs, MPS) bf16 is emulated or uncertain."""
    if device.type == "cuda":
        return cuda_supports_bf16()
    return device.type == "cpu" and cpu_supports_bf16()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA GPUs with native bf16 and on CPUs with bf16 instructions, else fp16 on
    older CUDA GPUs, else fp32."""
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} must be one of {', '.join(DTYPES)}")
    if name == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "float16" and device.type == "cpu":
        raise ConfigError("dtype=float16 is not supported on CPU: use bfloat16 or float32")
    if name == "bfloat16" and device.type == "cpu" and not cpu_supports_bf16():
        print("warning: dtype=bfloat16 on a CPU without bf16 instructions (AVX-512 BF16 or AMX) is emulated, its "
              "matrix multiplies ~100x slower than float32: use dtype=auto (float32 here) unless you want bf16's "
              "rounding", file=sys.stderr, flush=True)
    if name == "bfloat16" and device.type == "cuda" and not cuda_supports_bf16():
        raise ConfigError(f"dtype=bfloat16 but this GPU ({torch.cuda.get_device_name(device)}) has no native bf16 "
                          "support: use float16 or float32")
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; weights and optimizer state stay in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; on CUDA through pinned memory so the copy overlaps with compute."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
