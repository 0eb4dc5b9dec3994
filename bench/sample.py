"""Generation speed with and without the KV cache.

Random weights (speed does not depend on them) of the CPU preset and the GPU default, greedy from a
16-token prompt, one sequence and a batch of 8: as many new tokens as fit in the context (at most
240), and 512, past it, where the window slides and the cache is rebuilt every step. Eager; on CUDA with
the cached one-token step replayed as a recorded CUDA graph (`sample.py`'s default there); and compiled
(`sample.py compile=true`). Set-up (recording, compiling) is not in the rates: the line below the table has it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch

from bench.timing import header, machine, row, timed
from common.device import resolve_device
from model import GPT, GPTConfig

ARCHITECTURES = {
    "cpu preset": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),
    "gpu default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
PROMPT_TOKENS = 16


def tokens_per_second(model: GPT, batch: int, new_tokens: int, use_kv_cache: bool, repeats: int
                      ) -> tuple[float, torch.Tensor, float]:
    """Generated tokens per second over the whole batch (best of `repeats`), the output (batch, PROMPT_TOKENS +
    new_tokens), and the seconds of a first 2-token generation, which records or compiles what needs it."""
    device = model.wte.weight.device
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=generator).to(device)

    def generate(n: int) -> torch.Tensor:
        return model.generate(prompt, n, temperature=0, use_kv_cache=use_kv_cache)

    set_up = timed(lambda: generate(2), device)
    best = min(timed(lambda: generate(new_tokens), device) for _ in range(repeats))
    return batch * new_tokens / best, generate(new_tokens), set_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (adds the CUDA-graph columns)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled columns")
    args = parser.parse_args()
    device = resolve_device(args.device)
    decoders = ["KV cache", *["KV cache + CUDA graph"] * (device.type == "cuda"),
                *["KV cache + compile"] * (not args.no_compile)]
    print(f"greedy generation, {PROMPT_TOKENS}-token prompt, vocab 8192, {args.dtype}, {machine(device)}")
    header("model", "batch", "new tokens", "end length / context", "no cache tok/s",
           *(f"{decoder} {column}" for decoder in decoders for column in ("tok/s", "speed-up", "same tokens")))
    set_up_seconds = {}  # (decoder, model, batch) -> seconds of its first 2-token generation
    for name, arch in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=8192, dropout=0.0, bias=False, **arch)).to(device).eval()
        model.to_inference_dtype(getattr(torch, args.dtype))  # as sample.py
        inside = min(240, arch["block_size"] - PROMPT_TOKENS)
        cases = [(1, inside), (1, 512), (8, inside)]  # (batch, new tokens)
        runs = {case: [tokens_per_second(model, *case, False, args.repeats)] for case in cases}
        for decoder in decoders:
            if decoder.endswith("CUDA graph"):
                model.engine.use_cuda_graph()
            elif decoder.endswith("compile"):
                model.engine.compile()
            for batch, new_tokens in cases:
                rate, out, set_up = tokens_per_second(model, batch, new_tokens, True, args.repeats)
                runs[batch, new_tokens].append((rate, out, set_up))
                set_up_seconds.setdefault((decoder, name, batch), set_up)  # the first case of a batch size sets up
        for (batch, new_tokens), [(slow, slow_out, _), *cached] in runs.items():
            end = PROMPT_TOKENS + new_tokens
            where = "inside" if end <= arch["block_size"] else "past"
            row(name, batch, new_tokens, f"{end} / {arch['block_size']} ({where})", f"{slow:.0f}",
                *(cell for rate, out, _ in cached
                  for cell in (f"{rate:.0f}", f"{rate / slow:.1f}x", "yes" if torch.equal(slow_out, out) else "no")))
    print("first 2-token generation (recording or compiling included), s: " + ", ".join(
        f"{decoder}, {name}, batch {batch}: {seconds:.2f}"
        for (decoder, name, batch), seconds in set_up_seconds.items()))


if __name__ == "__main__":
    main()
