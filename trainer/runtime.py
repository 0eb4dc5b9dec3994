"""The training process: host memory a CPU step reuses, and the random streams a checkpoint saves."""
from __future__ import annotations

import ctypes
import random

import numpy as np
import torch


def reuse_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step allocates and frees the same large tensors every time (at the GPU default
    architecture the bf16 logits alone are 32 MiB). By default glibc serves such blocks with fresh
    mmap pages and unmaps them on free, so every step the kernel faults in and zeroes them again
    (trainer/README.md, "Host memory on a CPU", has the figures). With mmap and trimming off,
    blocks come from the heap and, after a few steps, every page is reused, for a little more
    peak memory.
    Large requests from other threads still fall back to mmap, so nothing can fail for it. CUDA
    tensors have PyTorch's caching allocator and are unaffected. Returns False (and changes
    nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every random stream a training step of this process reads, as tensors and plain values
    (weights_only-safe): Python's, NumPy's, torch's CPU generator and, on CUDA, the generator of
    this process's own GPU (not every visible GPU's: each rank saves its own)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [keys.tolist(), pos, has_gauss, gauss], "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)  # a CPU ByteTensor
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state saved; its CUDA generator goes to `device`, the GPU of this process."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
