"""Training-step throughput on this machine, ours beside karpathy/nanoGPT's model.py.

    python bench/train_throughput.py --nanogpt /path/to/nanoGPT [--batch 8 --steps 10]

The GPU default architecture (6 layers, 6 heads, 384 dims, context 256, vocab 8192, no bias,
dropout 0) and the same batch for both models. Ours: attn_impl explicit | sdpa | flash, fp32 and
bf16 autocast, torch.compile off and on; nanoGPT: fp32 and bf16, compile off and on, with its own
optimizer set-up (configure_optimizers). nanoGPT's code is read from the folder you give (a
clone of its repository) and is never part of this project. Each setting: warm-up steps (which
include compilation), then the mean of timed steps; tokens/s, model FLOP/s and the fraction of
the measured bf16 matmul peak. Without --nanogpt only our rows are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402
from trainer.mfu import flops_per_token, measure_cpu_peak  # noqa: E402
from trainer.optim import make_optimizers  # noqa: E402
from trainer.runtime import autocast  # noqa: E402

ARCH = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, dropout=0.0, bias=False)


def load_nanogpt(folder: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_steps(model, optimizer, dtype: torch.dtype, compile_: bool, batch: int, warmup: int, steps: int) -> float:
    """Seconds per training step (forward, backward, clip, AdamW) after warm-up."""
    device = torch.device("cpu")
    step_model = torch.compile(model) if compile_ else model
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, ARCH["vocab_size"], (batch, ARCH["block_size"]), generator=generator)
    y = torch.randint(0, ARCH["vocab_size"], (batch, ARCH["block_size"]), generator=generator)
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        with autocast(device, dtype):
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def ours(attn_impl: str):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**ARCH, attn_impl=attn_impl))
    tc = OmegaConf.create({"optimizer": "adamw", "weight_decay": 0.1, "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.99})
    (optimizer,) = make_optimizers(model, tc, torch.device("cpu"))
    return model, optimizer


def theirs(nanogpt):
    torch.manual_seed(0)
    model = nanogpt.GPT(nanogpt.GPTConfig(**ARCH))
    return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="folder of a karpathy/nanoGPT clone (holds model.py)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    flops = flops_per_token(GPT(GPTConfig(**ARCH))) * args.batch * ARCH["block_size"]
    peak = measure_cpu_peak(torch.bfloat16, seconds=2.0)
    print(f"training step, GPU default architecture (6x6x384, context 256, vocab 8192), batch {args.batch}, cpu "
          f"({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"measured bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")
    settings = [("ours", impl) for impl in ("explicit", "sdpa", "flash")]
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    if nanogpt:
        settings.append(("nanoGPT", "its default (sdpa)"))
    print("| model | attention | dtype | compile | ms/step | tokens/s | GFLOP/s | % of bf16 peak |")
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for who, attention in settings:
        for dtype in (torch.float32, torch.bfloat16):
            for compile_ in (False, True):
                model, optimizer = ours(attention) if who == "ours" else theirs(nanogpt)
                seconds = time_steps(model, optimizer, dtype, compile_, args.batch, args.warmup, args.steps)
                tokens = args.batch * ARCH["block_size"] / seconds
                best[who] = max(best.get(who, 0.0), tokens)
                print(f"| {who} | {attention} | {str(dtype).removeprefix('torch.')} | {'on' if compile_ else 'off'} | "
                      f"{seconds * 1e3:.0f} | {tokens:,.0f} | {flops / seconds / 1e9:.0f} | {100 * flops / seconds / peak:.0f}% |",
                      flush=True)
                torch._dynamo.reset()
    if nanogpt:
        print(f"best: ours {best['ours']:,.0f} tokens/s, nanoGPT {best['nanoGPT']:,.0f} tokens/s "
              f"-> {best['ours'] / best['nanoGPT']:.2f}x")


if __name__ == "__main__":
    main()
