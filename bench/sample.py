"""Generation speed with and without the KV cache.

Random weights (speed does not depend on them) of the CPU preset and the GPU default, greedy from a
16-token prompt, one sequence and a batch of 8: as many new tokens as fit in the context (at most
240), and 512, past it, where the window slides and the cache is rebuilt every step. Eager, and
with the cached one-token step compiled (`sample.py compile=true`; its compile time is not counted).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch

from bench.timing import header, machine, row
from model import GPT, GPTConfig

ARCHITECTURES = {
    "cpu preset": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),
    "gpu default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
PROMPT_TOKENS = 16


def tokens_per_second(model: GPT, batch: int, new_tokens: int, use_kv_cache: bool, repeats: int
                      ) -> tuple[float, torch.Tensor]:
    """Generated tokens per second over the whole batch (best of `repeats`, after a warm-up that
    compiles what needs compiling), and the output (batch, PROMPT_TOKENS + new_tokens)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=generator)
    model.generate(prompt, 2, temperature=0, use_kv_cache=use_kv_cache)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = model.generate(prompt, new_tokens, temperature=0, use_kv_cache=use_kv_cache)
        best = min(best, time.perf_counter() - started)
    return batch * new_tokens / best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled columns")
    args = parser.parse_args()
    compiled = not args.no_compile
    print(f"greedy generation, {PROMPT_TOKENS}-token prompt, vocab 8192, {args.dtype}, {machine()}")
    header("model", "batch", "new tokens", "end length / context", "no cache tok/s", "KV cache tok/s", "speed-up",
           "same tokens", *(["KV cache + compile tok/s", "speed-up", "same tokens"] if compiled else []))
    compile_seconds = {}
    for name, arch in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=8192, dropout=0.0, bias=False, **arch)).eval()
        model.to_inference_dtype(getattr(torch, args.dtype))  # as sample.py
        inside = min(240, arch["block_size"] - PROMPT_TOKENS)
        cases = [(1, inside), (1, 512), (8, inside)]  # (batch, new tokens)
        runs = {case: [tokens_per_second(model, *case, use_kv_cache, args.repeats) for use_kv_cache in (False, True)]
                for case in cases}
        if compiled:
            model.engine.compile()
            for batch, new_tokens in cases:
                started = time.perf_counter()
                runs[batch, new_tokens].append(tokens_per_second(model, batch, new_tokens, True, args.repeats))
                compile_seconds.setdefault((name, batch), time.perf_counter() - started)  # the first run compiles
        for (batch, new_tokens), [(slow, slow_out), *cached] in runs.items():
            end = PROMPT_TOKENS + new_tokens
            where = "inside" if end <= arch["block_size"] else "past"
            row(name, batch, new_tokens, f"{end} / {arch['block_size']} ({where})", f"{slow:.0f}",
                *(cell for rate, out in cached  # the KV cache, then the KV cache compiled
                  for cell in (f"{rate:.0f}", f"{rate / slow:.1f}x", "yes" if torch.equal(slow_out, out) else "no")))
    if compile_seconds:
        print("first compiled run (compile + measurement), s: "
              + ", ".join(f"{name} batch {batch} {seconds:.0f}" for (name, batch), seconds in compile_seconds.items()))


if __name__ == "__main__":
    main()
