"""Training-step throughput on this machine (CPU or CUDA GPU), ours beside karpathy/nanoGPT's model.py.

    python bench/train_throughput.py --nanogpt /path/to/nanoGPT [--device cuda] [--batch 8 --steps 15]

The GPU default architecture (6 layers, 6 heads, 384 dims, context 256, vocab 8192, no bias,
dropout 0) and the same batch for both models (default: 8 sequences on a CPU, 64 on a GPU, the
GPU default's batch). Ours: attn_impl explicit | sdpa | flash, fp32 (TF32 on a GPU, as train.py
sets it) and bf16 autocast, torch.compile off and on; nanoGPT: fp32 and bf16, compile off and on,
with its own optimizer set-up (configure_optimizers). nanoGPT's code is read from the folder you
give (a clone of its repository) and is never part of this project. Both run train.py's own
training step (bench/timing.py: train.py's train_step, with the loss scaler, the non-finite
guard and the host-to-device copy), synchronised on a GPU. Each setting: warm-up steps (which
include compilation), then timed steps: the median and the best step time, and from the best
one tokens/s, model FLOP/s and the fraction of the peak: on a CPU the measured matmul peak (the
best of 2 s of matmuls; a CPU's speed drifts by 5-10 % over seconds, so like is compared with
like), on a GPU the dense bf16/fp16 peak of trainer/mfu.py's table (MFU). Without --nanogpt only
our rows are printed.

The low-precision rows, the peak and the floor use the dtype train.py's dtype=auto picks: bf16, or
fp16 on GPUs without native bf16, or on a CPU without native bf16 (AVX2 only: bf16 is emulated
there, ~100x slower than fp32) fp32 alone, its bf16 rows left out.

The last row is a floor: the step's matrix multiplies alone, in that dtype, back to back, with nothing
else (no elementwise work, no optimizer). No implementation of this architecture and batch steps
faster on this device, so it bounds what any speed-up over nanoGPT can be.

The process starts with glibc's malloc set to reuse freed memory (trainer.runtime.reuse_host_memory,
as train.py does on a CPU); it is process-wide, so nanoGPT's rows get it too. --malloc-defaults
leaves glibc's defaults, as nanoGPT's own train.py runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.timing import TimedSteps, synchronize  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.mfu import flops_per_token, measure_cpu_peak, peak_flops  # noqa: E402
from trainer.optim import make_optimizers  # noqa: E402
from common.device import resolve_device, resolve_dtype
from trainer.runtime import reuse_host_memory  # noqa: E402

ARCH = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, dropout=0.0, bias=False)


def load_nanogpt(folder: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_steps(model, optimizer, dtype: torch.dtype, compile_: bool, batch: int, warmup: int, steps: int,
               device: torch.device) -> list[float]:
    """The seconds of each timed training step (train.py's: forward, backward, clip, AdamW), after warm-up."""
    step = TimedSteps(torch.compile(model) if compile_ else model, model, [optimizer], dtype, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, ARCH["vocab_size"], (batch, ARCH["block_size"]), generator=generator)  # on the host, as
    y = torch.randint(0, ARCH["vocab_size"], (batch, ARCH["block_size"]), generator=generator)  # train.py's batches
    times = [step(x, y) for _ in range(warmup + steps)]
    return times[warmup:]


def matmul_floor(batch: int, device: torch.device, dtype: torch.dtype, repeats: int = 10) -> list[float]:
    """Seconds per step of the step's matrix multiplies alone (in `dtype`, `repeats` times): per layer
    the four weight matrices (Q, K and V fused into one; W_O; the MLP's two), each forward and its
    two backward products; the attention's two batched products forward and four backward; the
    LM head's three. The attention products run over the full T x T and count half, the most a
    causal kernel can skip."""
    n_layer, C, T, V = ARCH["n_layer"], ARCH["n_embd"], ARCH["block_size"], ARCH["vocab_size"]
    head_dim, M = C // ARCH["n_head"], batch * T  # M: tokens per step

    def r(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    weights = [(r(M, k), r(n, k), r(M, n)) for k, n in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C), (C, V))]
    q, k, w = r(batch * ARCH["n_head"], T, head_dim), r(batch * ARCH["n_head"], T, head_dim), r(batch * ARCH["n_head"], T, T)

    def linears(layers: int, which: slice) -> None:
        for _ in range(layers):
            for x, weight, grad_out in weights[which]:
                x @ weight.t(), grad_out @ weight, grad_out.t() @ x  # forward, input grad, weight grad

    def attention() -> None:
        for _ in range(n_layer):
            q @ k.transpose(1, 2), w @ k  # scores, context
            w @ k, w.transpose(1, 2) @ q, q @ k.transpose(1, 2), w.transpose(1, 2) @ q  # their backward

    def timed(fn) -> list[float]:
        fn()
        times = []
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - started)
        return times

    parts = timed(lambda: linears(n_layer, slice(0, 4))), timed(lambda: linears(1, slice(4, 5))), timed(attention)
    return [blocks + head + attn / 2 for blocks, head, attn in zip(*parts)]


def ours(attn_impl: str, device: torch.device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**ARCH, attn_impl=attn_impl)).to(device)
    tc = TrainConfig(optimizer="adamw", weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.99)
    (optimizer,) = make_optimizers(model, tc, device)
    return model, optimizer


def theirs(nanogpt, device: torch.device):
    torch.manual_seed(0)
    model = nanogpt.GPT(nanogpt.GPTConfig(**ARCH)).to(device)
    return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="folder of a karpathy/nanoGPT clone (holds model.py)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="sequences per step (default: 8 on a CPU, 64 on a GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--malloc-defaults", action="store_true", help="keep glibc's malloc defaults (see above)")
    args = parser.parse_args()
    device = resolve_device(args.device)  # on CUDA also train.py's TF32 setting for fp32 matmuls
    args.batch = args.batch or (64 if device.type == "cuda" else 8)
    tokens_per_step = args.batch * ARCH["block_size"]
    flops = flops_per_token(GPT(GPTConfig(**ARCH))) * tokens_per_step
    fast = resolve_dtype("auto", device)  # train.py's choice: the peak's and the floor's dtype
    dtypes = (torch.float32,) if fast == torch.float32 else (torch.float32, fast)
    if device.type == "cuda":
        peak, source = peak_flops(device, fast)
        if peak is None:
            raise SystemExit(f"{source}: add its dense bf16 peak to trainer/mfu.py's GPU_PEAK_FLOPS")
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; {str(fast).removeprefix('torch.')} peak {peak / 1e12:.0f} TFLOP/s ({source})"
    else:
        malloc = "glibc defaults" if args.malloc_defaults or not reuse_host_memory() else "reuse_host_memory"
        peak = measure_cpu_peak(fast, seconds=2.0)
        machine = (f"cpu ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
                   f"malloc: {malloc}; measured {str(fast).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s"
                   + ("" if fast != torch.float32 else "; no native bf16 on this CPU: bf16 rows left out"))
    print(f"training step, GPU default architecture (6x6x384, context 256, vocab 8192), batch {args.batch}, {machine}")
    settings = [("ours", impl) for impl in ("explicit", "sdpa", "flash")]
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    if nanogpt:
        settings.append(("nanoGPT", "its default (sdpa)"))
    print(f"| model | attention | dtype | compile | ms/step (median) | ms/step (best) | tokens/s | GFLOP/s | % of {str(fast).removeprefix('torch.')} peak (MFU) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def row(who: str, attention: str, dtype: str, compile_: str, times: list[float]) -> float:
        """Print one row; tokens/s and FLOP/s from the best step, as the peak is the best matmul."""
        seconds = min(times)
        print(f"| {who} | {attention} | {dtype} | {compile_} | {statistics.median(times) * 1e3:.0f} | {seconds * 1e3:.0f} | "
              f"{tokens_per_step / seconds:,.0f} | {flops / seconds / 1e9:.0f} | {100 * flops / seconds / peak:.0f}% |",
              flush=True)
        return tokens_per_step / seconds

    best = {}
    for who, attention in settings:
        for dtype in dtypes:
            for compile_ in (False, True):
                model, optimizer = ours(attention, device) if who == "ours" else theirs(nanogpt, device)
                times = time_steps(model, optimizer, dtype, compile_, args.batch, args.warmup, args.steps, device)
                tokens = row(who, attention, str(dtype).removeprefix("torch."), "on" if compile_ else "off", times)
                best[who] = max(best.get(who, 0.0), tokens)
                torch._dynamo.reset()
    floor = row("floor: matmuls alone", "-", str(fast).removeprefix("torch."), "-", matmul_floor(args.batch, device, fast))
    print(f"best: ours {best['ours']:,.0f} tokens/s ({100 * best['ours'] / floor:.0f}% of the floor)"
          + (f", nanoGPT {best['nanoGPT']:,.0f} tokens/s -> {best['ours'] / best['nanoGPT']:.2f}x; the floor is "
             f"{floor / best['nanoGPT']:.2f}x nanoGPT's best" if nanogpt else ""))

if __name__ == "__main__":
    main()
