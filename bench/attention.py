"""Time and peak memory of one attention call per backend, for growing context T: forward + backward time,
the forward's peak memory without autograd (inference) and the peak of forward + backward (training).

The explicit path holds the T x T scores and weights, and autograd keeps them for the backward pass, so its
memory grows as T^2. The tiled path (tiled_attention, the flash algorithm in plain PyTorch) holds one tile x T
block of scores at a time and recomputes them in the backward pass: memory that grows as T. sdpa and flash are
PyTorch's fused kernels. `additive` is the explicit path with additive scores (attn_dim = head_dim): its memory,
but time that grows as T^2 x attn_dim.

Peak memory is the most bytes that the tensors allocated during the call hold at once (the inputs q, k, v do not
count; the returned context and gradients do): on a GPU from the caching allocator's counters, on a CPU from
torch.profiler's record of every tensor allocation and free (profile_memory). Neither counts the allocator's
cached or fragmented memory, nor a kernel's scratch space that no tensor holds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch
from matplotlib.figure import Figure
from torch.profiler import ProfilerActivity, profile

from bench.timing import REPO, header, machine, row, timed
from model.additive import additive_chunk_bytes, additive_scores
from model.attention import explicit_attention, flash_attention, flash_kernel_exists, sdpa_attention, tiled_attention
from model.config import GPTConfig

ADDITIVE_MAX_LENGTH = 512  # at T = 1024 one additive point took 13 s on a 2-core CPU (6 x 1.9 s)
# the table's rows: one attention call on q, k, v (B, H, T, head_dim), given the additive score's function and the tile
BACKENDS = {
    "explicit": lambda q, k, v, score, tile: explicit_attention(q, k, v)[0],
    "tiled": lambda q, k, v, score, tile: tiled_attention(q, k, v, tile=tile),
    "additive": lambda q, k, v, score, tile: explicit_attention(q, k, v, score=score)[0],
    "sdpa": lambda q, k, v, score, tile: sdpa_attention(q, k, v),
    "flash": lambda q, k, v, score, tile: flash_attention(q, k, v),  # only where a flash kernel exists
}


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """The most MiB that tensors allocated during fn() hold at once (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        fn()
    with tempfile.TemporaryDirectory() as folder:  # the trace keeps each allocation (+bytes) and free (-bytes)
        recorded.export_chrome_trace(f"{folder}/trace.json")
        events = json.loads(Path(f"{folder}/trace.json").read_text())["traceEvents"]
    changes = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak / 2**20


def measure(backend: str, T: int, args: argparse.Namespace) -> tuple[str, str, str]:
    """The median ms of one attention call's forward + backward, the MiB of its forward's peak without autograd,
    and the MiB of its forward + backward's peak."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device, dtype).requires_grad_()

    q, k, v = (leaf(args.batch, args.heads, T, args.head_dim) for _ in range(3))  # (B, H, T, head_dim)
    W_q, W_k = (leaf(args.heads, args.head_dim, args.head_dim, scale=args.head_dim**-0.5) for _ in range(2))
    v_score = leaf(args.heads, args.head_dim, scale=0.02)
    score = partial(additive_scores, W_q=W_q, W_k=W_k, v=v_score)

    def forward() -> None:
        with torch.no_grad():
            BACKENDS[backend](q, k, v, score, args.tile)

    def forward_backward() -> None:  # the gradients are returned and dropped: no call starts with the last one's
        out = BACKENDS[backend](q, k, v, score, args.tile)
        torch.autograd.grad(out.sum(), [q, k, v, W_q, W_k, v_score], allow_unused=True)

    times = [timed(forward_backward, device) for _ in range(args.repeats + 1)][1:]  # the first warms up
    return (f"{statistics.median(times) * 1e3:.1f}", f"{peak_mib(forward, device):.1f}",
            f"{peak_mib(forward_backward, device):.1f}")


def plot(table: dict[str, dict[int, tuple[str, str, str]]], path: Path, title: str) -> None:
    """Peak memory (forward, forward + backward) and time against T, log-log: a slope of 1 is linear, 2 quadratic."""
    fig = Figure(figsize=(13, 4))
    ylabels = {1: "forward peak MiB (no autograd)", 2: "forward + backward peak MiB", 0: "forward + backward ms"}
    for ax, (column, ylabel) in zip(fig.subplots(1, 3), ylabels.items()):
        for backend, points in table.items():
            lengths = sorted(points)
            ax.plot(lengths, [float(points[T][column]) for T in lengths], marker="o", label=backend)
        ax.set(xscale="log", yscale="log", xlabel="context T", ylabel=ylabel)
        ax.set_xticks(lengths, [str(T) for T in lengths])
        ax.minorticks_off()  # only the measured T on the axis
        ax.grid(alpha=0.3)
    ax.legend()
    fig.suptitle(f"{title}\nlog-log: a slope of 1 grows as T, a slope of 2 as T^2", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tile", type=int, default=GPTConfig.attn_tile, help="queries and keys per tile of tiled")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--additive-max-length", type=int, default=ADDITIVE_MAX_LENGTH,
                        help="run the additive backend only up to this T")
    parser.add_argument("--plot", type=Path, default=REPO / "bench" / "results" / "attention.png")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    flash = flash_kernel_exists(device, dtype, args.head_dim, square_or_unmasked=True)
    backends = [backend for backend in BACKENDS if backend != "flash" or flash]
    title = (f"one attention call: batch {args.batch}, {args.heads} heads x {args.head_dim} dims, {args.dtype}, "
             f"tile {args.tile}, {machine(device)}")
    print(title)
    header("T", "backend", "forward + backward ms", "forward peak MiB", "forward + backward peak MiB")
    table: dict[str, dict[int, tuple[str, str, str]]] = {backend: {} for backend in backends}
    for T in args.lengths:
        for backend in backends:
            if backend != "additive" or T <= args.additive_max_length:
                table[backend][T] = measure(backend, T, args)
                row(T, backend, *table[backend][T])
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
    plot(table, args.plot, title)


if __name__ == "__main__":
    main()
