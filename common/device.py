"""Where and in what precision tensors live: the `device` and `dtype` settings resolved against the
machine, the autocast context of the forward pass, host -> device copies, and recording a CUDA graph."""
from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from typing import TypeVar

import torch

from common.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
T = TypeVar("T")


def device_rule(name: str) -> str | None:
    """What a device name must be, or None for auto, cpu, cuda, mps or cuda:N (whether it exists is
    resolve_device's business)."""
    if name in DEVICES or re.fullmatch(r"cuda:\d+", name):
        return None
    return f"one of {', '.join(DEVICES)} (or cuda:N)"


def resolve_device(name: str) -> torch.device:
    """The device `name` says (auto: CUDA, else MPS, else CPU)."""
    what = device_rule(name)
    if what:
        raise ConfigError(f"device={name!r} must be {what}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible to torch {torch.__version__}: "
                          "use device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this machine has no MPS backend: use device=cpu or auto")
    if name.startswith("cuda"):
        # fp32 matmuls may use TF32 tensor cores (10-bit mantissa products, fp32 sums): fp32 training,
        # sampling and the attention report run several times faster on Ampere and newer. The CUDA
        # switch alone: torch.set_float32_matmul_precision would also change oneDNN's CPU matmuls
        torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # cuda:1's streams and CUDA graphs: the current device's, so make it current
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX-512 BF16 or AMX); without them
    bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_supports_bf16() -> bool:
    """True on GPUs that compute in bf16 natively (Ampere and newer). torch's default also counts GPUs
    that only emulate it (V100, T4), where bf16 is slow and fp16 with loss scaling is right."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def native_bf16(device: torch.device) -> bool:
    """True where `device` multiplies in bf16 natively; elsewhere (older GPUs, other CPUs, MPS) bf16 is
    emulated or uncertain."""
    if device.type == "cuda":
        return cuda_supports_bf16()
    return device.type == "cpu" and cpu_supports_bf16()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 where `device` computes in it natively, else fp16 on older CUDA GPUs, else fp32."""
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
    return getattr(torch, name)  # a name the dtype setting checked: one of DTYPES


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; weights and optimizer state stay in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; on CUDA through pinned memory so the copy overlaps with compute."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def on_side_stream(run: Callable[[], T], side: torch.cuda.Stream) -> T:
    """run() on the stream `side`, eagerly, before it is recorded as a CUDA graph: PyTorch's CUDA-graph notes
    ask for it, so that cuBLAS, the caching allocator and autograd set themselves up outside the graph."""
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        result = run()
    torch.cuda.current_stream().wait_stream(side)
    return result


def record_cuda_graph(run: Callable[[], T], what: str) -> tuple[torch.cuda.CUDAGraph, T] | None:
    """run() recorded as a CUDA graph (its kernels, not run) and what it returned; None, with one warning line,
    where torch or the GPU refuses (a kernel that reads a value back to the host): `what` then runs without."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            outputs = run()
    except RuntimeError as e:
        torch.cuda.set_stream(stream)  # torch.cuda.graph leaves its own stream current when ending the capture fails
        cause = e.__context__ or e  # the kernel's refusal: ending the capture it invalidated raises after it
        print(f"warning: {what} could not be recorded as a CUDA graph ({str(cause).splitlines()[0]}); it runs "
              "without one (cuda_graph=false skips the attempt)", file=sys.stderr, flush=True)
        return None
    return graph, outputs
