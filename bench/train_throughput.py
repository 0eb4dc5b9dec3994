"""Training-step throughput on this machine (CPU or CUDA GPU), ours beside karpathy/nanoGPT's model.py.

Both at one architecture (--arch: the GPU default, or GPT-2 small as preset=gpt2) and the same batch:
ours with each attn_impl (--attn), nanoGPT's (read
from your clone, never copied here) with its own configure_optimizers; in fp32 and in the dtype
train.py's dtype=auto picks (not on a CPU without native bf16: emulated, it runs ~100x slower);
torch.compile off and on; each through train.py's own step. Rates come from the best step, against
the best of 2 s of matmuls on a CPU (its speed drifts from second to second) or trainer/mfu.py's
dense peak on a GPU (MFU). The last row is a floor: the step's matrix multiplies alone. train.py
reuses freed host memory on a CPU, and so does this process, for nanoGPT's rows too;
--malloc-defaults keeps glibc's defaults instead.
"""
from __future__ import annotations

import argparse
import itertools
import runpy
import statistics
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch

from bench.timing import header, machine, row, step_timer, timed
from common.device import resolve_device, resolve_dtype
from model import GPT, GPTConfig
from model.config import ATTN_IMPLS
from trainer.config import TrainConfig
from trainer.mfu import flops_per_token, measure_cpu_peak, peak_flops
from trainer.optim import make_optimizers
from trainer.runtime import reuse_host_memory

ARCHS = {  # the GPU default (config/train.yaml) and GPT-2 small (config/preset/gpt2.yaml), on our BPE's vocabularies
    "gpu-default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, dropout=0.0, bias=False),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=False),
}
TC = TrainConfig(optimizer="adamw", weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.99)  # both models' AdamW


def matmul_floor(arch: dict, batch: int, device: torch.device, dtype: torch.dtype, repeats: int = 10) -> list[float]:
    """Seconds per step (`repeats` times) of the step's matrix multiplies alone, each forward product
    with its backward ones; the attention's run over the full T x T and count half, the most a
    causal kernel can skip."""
    n_layer, n_head, C, T, V = (arch[key] for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    M = batch * T  # tokens per step
    r = partial(torch.randn, dtype=dtype, device=device)
    # (input (M, k), weight (n, k), output gradient (M, n)) of each layer's k -> n matrices (Q, K and V
    # fused into one; W_O; the MLP's two), then of the LM head's
    linears = [(r(M, k), r(n, k), r(M, n)) for k, n in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))] * n_layer
    linears.append((r(M, C), r(V, C), r(M, V)))
    q, k, w = r(batch * n_head, T, C // n_head), r(batch * n_head, T, C // n_head), r(batch * n_head, T, T)

    def linear_products() -> None:
        for x, weight, grad_out in linears:
            x @ weight.t(), grad_out @ weight, grad_out.t() @ x  # forward, input grad, weight grad

    def attention_products() -> None:
        for _ in range(n_layer):
            q @ k.transpose(1, 2), w @ k  # scores, context
            w @ k, w.transpose(1, 2) @ q, q @ k.transpose(1, 2), w.transpose(1, 2) @ q  # their backward

    def seconds(fn) -> list[float]:
        fn()  # warm-up
        return [timed(fn, device) for _ in range(repeats)]

    return [full + half / 2 for full, half in zip(seconds(linear_products), seconds(attention_products))]


def build(who: str, arch: dict, attn_impl: str, nanogpt: dict, device: torch.device):
    """A model and its optimizers: ours with train.py's AdamW, nanoGPT's with its configure_optimizers."""
    torch.manual_seed(0)
    if who == "ours":
        model = GPT(GPTConfig(**arch, attn_impl=attn_impl)).to(device)
        return model, make_optimizers(model, TC, device)
    model = nanogpt["GPT"](nanogpt["GPTConfig"](**arch)).to(device)
    return model, [model.configure_optimizers(TC.weight_decay, TC.learning_rate, (TC.beta1, TC.beta2), device.type)]


def peak_and_source(device: torch.device, fast: torch.dtype, malloc_defaults: bool) -> tuple[float, str]:
    """The peak FLOP/s that MFU divides by, and where it comes from (a CPU's is measured, its malloc said)."""
    name = str(fast).removeprefix("torch.")
    if device.type == "cuda":
        peak, source = peak_flops(device, fast)
        if peak is None:
            raise SystemExit(f"{source}: add its dense bf16 peak to trainer/mfu.py's GPU_PEAK_FLOPS")
        return peak, f"{name} peak {peak / 1e12:.0f} TFLOP/s ({source})"
    malloc = "glibc defaults" if malloc_defaults or not reuse_host_memory() else "reuse_host_memory"
    peak = measure_cpu_peak(fast, seconds=2.0)
    return peak, (f"malloc: {malloc}; measured {name} matmul peak {peak / 1e9:.0f} GFLOP/s"
                  + ("; no native bf16 on this CPU: bf16 rows left out" if fast == torch.float32 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="folder of a karpathy/nanoGPT clone (holds model.py)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="gpu-default", choices=tuple(ARCHS))
    parser.add_argument("--attn", nargs="+", default=list(ATTN_IMPLS), choices=ATTN_IMPLS,
                        help="our attn_impls to time (explicit's T x T weights at gpt2's context take GBs)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: 8 on a CPU; on a GPU 64, gpt2 16)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps: compiling, recording the CUDA graph")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--malloc-defaults", action="store_true", help="keep glibc's malloc defaults, as nanoGPT runs")
    args = parser.parse_args()
    device = resolve_device(args.device)  # on CUDA also train.py's TF32 setting for fp32 matmuls
    arch = ARCHS[args.arch]
    args.batch = args.batch or (8 if device.type != "cuda" else 16 if args.arch == "gpt2" else 64)
    tokens = args.batch * arch["block_size"]  # per step
    with torch.device("meta"):  # the count needs the shapes only
        flops = flops_per_token(GPT(GPTConfig(**arch))) * tokens
    fast = resolve_dtype("auto", device)  # train.py's choice: the peak's and the floor's dtype
    dtypes = (torch.float32,) if fast == torch.float32 else (torch.float32, fast)
    name = {dtype: str(dtype).removeprefix("torch.") for dtype in dtypes}
    peak, where = peak_and_source(device, fast, args.malloc_defaults)
    shape = f"{arch['n_layer']}x{arch['n_head']}x{arch['n_embd']}, context {arch['block_size']}"
    print(f"training step, {args.arch} ({shape}, vocab {arch['vocab_size']}), batch {args.batch}, "
          f"{machine(device)}; {where}")
    nanogpt = runpy.run_path(str(args.nanogpt / "model.py")) if args.nanogpt else {}  # its GPT and GPTConfig
    settings = [("ours", impl) for impl in args.attn] + [("nanoGPT", "its default (sdpa)")] * bool(nanogpt)
    header("model", "attention", "dtype", "compile", "ms/step (median)", "ms/step (best)", "tokens/s", "GFLOP/s",
           f"% of {name[fast]} peak (MFU)")

    def report(who: str, attention: str, dtype: torch.dtype, compiled: str, times: list[float]) -> float:
        """Print one row; tokens/s and FLOP/s from the best step, as the peak is the best matmul."""
        best = min(times)
        row(who, attention, name[dtype], compiled, f"{statistics.median(times) * 1e3:.0f}", f"{best * 1e3:.0f}",
            f"{tokens / best:,.0f}", f"{flops / best / 1e9:.0f}", f"{100 * flops / best / peak:.0f}%")
        return tokens / best

    generator = torch.Generator().manual_seed(0)  # random batches (B, T), on the host as train.py's
    x, y = torch.randint(0, arch["vocab_size"], (2, args.batch, arch["block_size"]), generator=generator)
    best = {}
    # compile off, on, and on CUDA also on with train.py's step replayed as one CUDA graph (cuda_graph=auto)
    modes = [("off", False, False), ("on", True, False)] + [("on + CUDA graph", True, True)] * (device.type == "cuda")
    for (who, attention), dtype, (mode, compile_, graph) in itertools.product(settings, dtypes, modes):
        if graph and who != "ours":
            continue
        model, optimizers = build(who, arch, attention, nanogpt, device)
        step = step_timer(model, torch.compile(model) if compile_ else model, optimizers, dtype, device, TC, graph)
        times = [step(x, y) for _ in range(args.warmup + args.steps)][args.warmup:]  # warm-up steps compile, record
        best[who] = max(best.get(who, 0.0), report(who, attention, dtype, mode, times))
        torch._dynamo.reset()
    floor = report("floor: matmuls alone", "-", fast, "-", matmul_floor(arch, args.batch, device, fast))
    print(f"best: ours {best['ours']:,.0f} tokens/s ({100 * best['ours'] / floor:.0f}% of the floor)"
          + (f", nanoGPT {best['nanoGPT']:,.0f} tokens/s -> {best['ours'] / best['nanoGPT']:.2f}x; the floor is "
             f"{floor / best['nanoGPT']:.2f}x nanoGPT's best" if nanogpt else ""))


if __name__ == "__main__":
    main()
