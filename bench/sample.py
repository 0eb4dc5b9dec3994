"""Generation speed with and without the KV cache.

    python bench/sample.py [--dtype float32|bfloat16] [--repeats 2] [--no-compile]

Two architectures with the default 8192-token vocabulary: the CPU preset (4 layers, 4 heads,
256 dims, context 128) and the GPU default (6 layers, 6 heads, 384 dims, context 256). Weights
are random (speed does not depend on them). Greedy decoding from a 16-token prompt: 240 new
tokens (or as many as fit in the context) and 512 new tokens (past the context, where the
window slides and the cache is rebuilt every step), for one sequence and for a batch of 8
(what `sample.py num_samples=8` generates). Prints tokens/s and the cache's speed-up, eager and
with the cached one-token step compiled (`sample.py compile=true`; compile time not counted,
it is printed below the table).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402

ARCHITECTURES = {
    "cpu preset": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),
    "gpu default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
PROMPT_TOKENS = 16


def tokens_per_second(model: GPT, new_tokens: int, batch: int, use_kv_cache: bool, repeats: int) -> tuple[float, torch.Tensor]:
    """Generated tokens per second over the whole batch (best of `repeats`, after a warm-up that
    compiles what needs compiling), and the output."""
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    model.generate(prompt, 2, temperature=0, use_kv_cache=use_kv_cache)
    best, out = float("inf"), None
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
    dtype = getattr(torch, args.dtype)
    print(f"greedy generation, {PROMPT_TOKENS}-token prompt, vocab 8192, {args.dtype}, cpu "
          f"({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}")
    compiled = not args.no_compile
    print("| model | batch | new tokens | end length / context | no cache tok/s | KV cache tok/s | speed-up | same tokens |"
          + (" KV cache + compile tok/s | speed-up | same tokens |" if compiled else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if compiled else ""))
    compile_seconds = {}
    for name, arch in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=8192, dropout=0.0, bias=False, **arch)).eval().to_inference_dtype(dtype)  # as sample.py
        inside = min(240, arch["block_size"] - PROMPT_TOKENS)
        rows = [(batch, new_tokens) for batch, new_tokens in ((1, inside), (1, 512), (8, inside))]
        results = {row: tokens_per_second(model, row[1], row[0], False, args.repeats) + tokens_per_second(
            model, row[1], row[0], True, args.repeats) for row in rows}
        if compiled:
            model.engine.compile()
            for batch, new_tokens in rows:
                started = time.perf_counter()
                results[batch, new_tokens] += tokens_per_second(model, new_tokens, batch, True, args.repeats)
                compile_seconds.setdefault((name, batch), time.perf_counter() - started)  # the first run compiles
        for (batch, new_tokens), (slow, slow_out, fast, fast_out, *compiled_result) in results.items():
            end = PROMPT_TOKENS + new_tokens
            where = "inside" if end <= arch["block_size"] else "past"
            cells = [f"{slow:.0f}", f"{fast:.0f}", f"{fast / slow:.1f}x", "yes" if torch.equal(slow_out, fast_out) else "no"]
            if compiled_result:
                rate, out = compiled_result
                cells += [f"{rate:.0f}", f"{rate / slow:.1f}x", "yes" if torch.equal(slow_out, out) else "no"]
            print(f"| {name} | {batch} | {new_tokens} | {end} / {arch['block_size']} ({where}) | " + " | ".join(cells) + " |")
    if compile_seconds:
        print("first compiled run (compile + measurement), s: "
              + ", ".join(f"{name} batch {batch} {seconds:.0f}" for (name, batch), seconds in compile_seconds.items()))


if __name__ == "__main__":
    main()
