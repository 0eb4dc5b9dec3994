"""The training process: host memory a CPU step reuses, and the random streams a checkpoint saves."""
from __future__ import annotations

import ctypes
import random

import numpy as np
import torch


def reuse_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel: a
    CPU step allocates and frees the same large tensors every time, and by default glibc maps them
    as fresh pages the kernel faults in and zeroes again each step (trainer/README.md, "Host memory
    on a CPU"). Returns False, changing nothing, where the C library is not glibc."""
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
    """Every random stream a training step of this process reads, as weights_only-safe values; on
    CUDA, the generator of this process's own GPU (each rank saves its own)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
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
