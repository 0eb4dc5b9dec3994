"""Forward + backward time and peak memory of one attention call per backend, for growing context T.

The explicit path keeps the T x T scores and weights for the backward pass, so its memory grows as
T^2; the fused kernels work in tiles. `additive` is the explicit path with additive scores
(attn_dim = head_dim): its memory, but time that grows as T^2 x attn_dim.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch

from bench.timing import header, machine, row, timed
from model.additive import additive_chunk_bytes, additive_scores
from model.attention import explicit_attention, flash_attention, flash_kernel_exists, sdpa_attention

ADDITIVE_MAX_LENGTH = 512  # at T = 1024 one additive point took 13 s on a 2-core CPU (6 x 1.9 s)
# the table's columns: one attention call on q, k, v (B, H, T, head_dim), given the additive score's function
BACKENDS = {
    "explicit": lambda q, k, v, score: explicit_attention(q, k, v)[0],
    "additive": lambda q, k, v, score: explicit_attention(q, k, v, score=score)[0],
    "sdpa": lambda q, k, v, score: sdpa_attention(q, k, v),
    "flash": lambda q, k, v, score: flash_attention(q, k, v),  # only where a flash kernel exists
}


def measure(backend: str, T: int, args: argparse.Namespace) -> tuple[str, str]:
    """The median ms of one attention call's forward + backward, and the MiB its peak memory grew by."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device, dtype).requires_grad_()

    q, k, v = (leaf(args.batch, args.heads, T, args.head_dim) for _ in range(3))  # (B, H, T, head_dim)
    W_q, W_k = (leaf(args.heads, args.head_dim, args.head_dim, scale=args.head_dim**-0.5) for _ in range(2))
    v_score = leaf(args.heads, args.head_dim, scale=0.02)
    score = partial(additive_scores, W_q=W_q, W_k=W_k, v=v_score)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def forward_backward() -> None:  # the gradients are returned and dropped: no call starts with the last one's
        torch.autograd.grad(BACKENDS[backend](q, k, v, score).sum(), [q, k, v, W_q, W_k, v_score], allow_unused=True)

    times = [timed(forward_backward, device) for _ in range(args.repeats + 1)][1:]  # the first warms up
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return f"{statistics.median(times) * 1e3:.1f}", f"{peak_mib:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--additive-max-length", type=int, default=ADDITIVE_MAX_LENGTH,
                        help="run the additive backend only up to this T")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    flash = flash_kernel_exists(device, dtype, args.head_dim, square_or_unmasked=True)
    backends = [backend for backend in BACKENDS if backend != "flash" or flash]
    print(f"attention forward+backward: batch {args.batch}, {args.heads} heads x {args.head_dim} dims, {args.dtype}, "
          f"{machine(device)}")
    header("T", *(f"{backend} {what}" for backend in backends for what in ("ms", "peak MiB")))
    # one process per point, so that each reads its own peak memory
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), max_tasks_per_child=1) as fresh:
        for T in args.lengths:
            cells = []
            for backend in backends:
                skip = backend == "additive" and T > args.additive_max_length
                cells += ("—", "—") if skip else fresh.submit(measure, backend, T, args).result()
            row(T, *cells)
    skipped = ", ".join(str(T) for T in args.lengths if T > args.additive_max_length)
    print("additive: explicit attention with additive scores, attn_dim = head_dim, pairs in chunks of at most "
          f"{additive_chunk_bytes(device) / 2**20:g} MiB" + (f"; not run at T = {skipped} (over --additive-max-length"
          f"={args.additive_max_length}: over 10 s a point on a 2-core CPU)" if skipped else ""))
    if not flash:
        print(f"flash: no FlashAttention kernel on {args.device} with {args.dtype}; attn_impl=flash would run the "
              "sdpa row's kernel here")
    T = args.lengths[-1]
    print(f"explicit scores + weights at T={T}: 2 x {args.batch} x {args.heads} x {T}^2 x {dtype.itemsize} bytes = "
          f"{2 * args.batch * args.heads * T * T * dtype.itemsize / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
