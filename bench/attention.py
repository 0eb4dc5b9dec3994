"""Forward + backward time and peak memory of the attention backends, for growing context T.

    python bench/attention.py [--heads 6 --head-dim 64 --batch 4 --dtype float32 --repeats 5]

Each (backend, T) runs in a fresh process so its peak resident memory (ru_maxrss) can be read
against a baseline taken after the inputs exist. The explicit path materialises the T x T
scores and weights per head (and keeps them for the backward pass), so its memory grows as T^2;
the fused kernels work in tiles and stay close to linear in T. `additive` is the explicit path
with additive scores (attn_dim = head_dim): attn_dim numbers per (query, key) pair, in chunks of
queries, so its memory stays that of the explicit path while its time grows as T^2 x attn_dim.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.additive import additive_chunk_bytes, additive_scores  # noqa: E402
from model.attention import explicit_attention, flash_attention, flash_kernel_exists, sdpa_attention  # noqa: E402

LENGTHS = (128, 256, 512, 1024, 2048)
ADDITIVE_MAX_LENGTH = 512  # at T = 1024 one additive point took 13 s on a 2-core CPU (6 x 1.9 s)


def measure_one(backend: str, T: int, args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, T, args.head_dim, generator=generator).to(device, dtype).requires_grad_()
               for _ in range(3))
    W_q, W_k = (torch.randn(args.heads, args.head_dim, args.head_dim, generator=generator).div(args.head_dim**0.5)
                .to(device, dtype).requires_grad_() for _ in range(2))
    v_score = torch.randn(args.heads, args.head_dim, generator=generator).mul(0.02).to(device, dtype).requires_grad_()
    additive = partial(additive_scores, W_q=W_q, W_k=W_k, v=v_score)
    run = {"explicit": lambda: explicit_attention(q, k, v)[0], "additive": lambda: explicit_attention(q, k, v, score=additive)[0],
           "sdpa": lambda: sdpa_attention(q, k, v), "flash": lambda: flash_attention(q, k, v)}[backend]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        run().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
        q.grad = k.grad = v.grad = W_q.grad = W_k.grad = v_score.grad = None
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return {"ms": sorted(times)[len(times) // 2] * 1e3, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--additive-max-length", type=int, default=ADDITIVE_MAX_LENGTH,
                        help="run the additive backend only up to this T")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return

    backends = ["explicit", "additive", "sdpa"]
    if flash_kernel_exists(torch.device(args.device), getattr(torch, args.dtype), args.head_dim, square_or_unmasked=True):
        backends.append("flash")
    passthrough = [f"--heads={args.heads}", f"--head-dim={args.head_dim}", f"--batch={args.batch}",
                   f"--dtype={args.dtype}", f"--device={args.device}", f"--repeats={args.repeats}"]
    print(f"attention forward+backward: batch {args.batch}, {args.heads} heads x {args.head_dim} dims, {args.dtype}, "
          f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")
    header = "| T | " + " | ".join(f"{b} ms | {b} peak MiB" for b in backends) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(backends)))
    for T in args.lengths:
        cells = []
        for backend in backends:
            if backend == "additive" and T > args.additive_max_length:
                cells += ["—", "—"]
                continue
            out = subprocess.run([sys.executable, __file__, *passthrough, "--one", backend, str(T)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            cells += [f"{result['ms']:.1f}", f"{result['peak_mib']:.0f}"]
        print(f"| {T} | " + " | ".join(cells) + " |")
    skipped = [T for T in args.lengths if T > args.additive_max_length]
    print(f"additive: explicit attention with additive scores, attn_dim = head_dim, pairs in chunks of at most "
          f"{additive_chunk_bytes(torch.device(args.device)) / 2**20:g} MiB" + (f"; not run at T = {', '.join(map(str, skipped))} (over "
          f"--additive-max-length={args.additive_max_length}: over 10 s a point on a 2-core CPU)" if skipped else ""))
    if "flash" not in backends:
        print(f"flash: no FlashAttention kernel on {args.device} with {args.dtype}; attn_impl=flash would run the "
              "sdpa row's kernel here")
    T = args.lengths[-1]
    print(f"explicit scores + weights at T={T}: 2 x {args.batch} x {args.heads} x {T}^2 x "
          f"{torch.finfo(getattr(torch, args.dtype)).bits // 8} bytes = "
          f"{2 * args.batch * args.heads * T * T * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
