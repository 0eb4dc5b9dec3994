"""Generate text from a trained checkpoint, or from a pretrained GPT-2 as it is.

    python sample.py                                  # one sample per default prompt, from out/
    python sample.py init_from=gpt2                   # GPT-2 itself (or init_from=/path/to/hf-folder)
    python sample.py prompt="ROMEO:" num_samples=3 temperature=0.7
    python sample.py prompt=中国 max_new_tokens=100 top_p=0.9 out_dir=out   # UTF-8 values need no quotes
    python sample.py 'prompt=["", "KING:"]'           # several prompts; "" starts from <|endoftext|>
    python sample.py prompt_file=prompts.txt format=jsonl > samples.jsonl
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.device import DTYPES, resolve_device, resolve_dtype
from common.errors import ConfigError
from common.settings import device_setting, seed_setting, setting, store_defaults, typed
from data.checkpoint import CHECKPOINTS, load_inference_model
from data.gpt2 import pretrained_rule
from data.sources import decode_utf8

# sampling divides float32 logits by the temperature: below ~1e-36 a logit of 100 overflows to inf and
# the probabilities turn NaN; 1e-30 keeps logits up to 3e8 finite and is already greedy in practice
MIN_TEMPERATURE = 1e-30


@dataclasses.dataclass
class SampleConfig:
    """sample.py's config (config/sample.yaml)."""
    out_dir: str = setting("out", path=True, fix="the folder holding ckpt.pt, best.pt and tokenizer.json")
    checkpoint: str = setting("best", choices=tuple(CHECKPOINTS),
                              fix="best (lowest val loss) or last (the latest save)")
    init_from: str | None = setting(None, path=True, check=pretrained_rule,
                                    fix="null samples the checkpoint in out_dir; a GPT-2 samples it as it is")
    prompt: list[str] = setting(["ROMEO:", "中国人民", "我喜欢喝茶。 ="],
                                check=lambda prompts: None if prompts else "a string or a non-empty list of strings",
                                fix='prompt="" starts from <|endoftext|>')
    prompt_file: str | None = setting(None, path=True, fix="a UTF-8 file with one prompt a line, or null")
    num_samples: int = setting(1, minimum=1, fix="samples per prompt, e.g. num_samples=1")
    max_new_tokens: int = setting(200, minimum=0, fix="e.g. max_new_tokens=200")
    temperature: float = setting(0.8, minimum=0,
                                 check=lambda t: None if t == 0 or t >= MIN_TEMPERATURE else
                                 f"0 (greedy) or at least {MIN_TEMPERATURE:g} (smaller ones overflow the logits)",
                                 fix="use temperature=0 for greedy decoding")
    top_k: int | None = setting(200, minimum=1, fix="keep the k most likely tokens, or top_k=null for no filter")
    top_p: float | None = setting(None, above=0, maximum=1, fix="e.g. top_p=0.9, or top_p=null for no nucleus filter")
    seed: int = seed_setting()
    device: str = device_setting()
    dtype: str = setting("float32", choices=DTYPES,
                         fix="float32 (TF32 matmuls on CUDA); bfloat16 or float16 cast the weights")
    use_kv_cache: bool = setting(True, fix="use_kv_cache=true or use_kv_cache=false")
    compile: bool = setting(False, fix="compile=true or compile=false")
    cuda_graph: str = setting("auto", choices=("auto", "true", "false"),
                              fix="auto replays each new token as one recorded CUDA graph on a CUDA device "
                                  "(eager launches every kernel from Python), unless compile=true")
    stream: bool | None = setting(None, fix="null streams for num_samples=1 in text format")
    format: str = setting("text", choices=("text", "jsonl"), fix="text for reading, jsonl for scripts")

    def __post_init__(self):
        if self.compile and not self.use_kv_cache:
            raise ConfigError("compile=true compiles the KV-cache decoding step: it needs use_kv_cache=true")
        if self.cuda_graph == "true" and (self.compile or not self.use_kv_cache):
            raise ConfigError("cuda_graph=true records the KV-cache decoding step, which compile=true compiles into "
                              "CUDA graphs of its own: use it with use_kv_cache=true and compile=false")
        if self.stream and self.num_samples > 1:
            raise ConfigError(f"stream=true needs num_samples=1 (got {self.num_samples}): the samples of a prompt "
                              "are generated together as one batch; use stream=false")
        if self.stream and self.format == "jsonl":
            raise ConfigError("stream=true prints text as it comes, format=jsonl one JSON object per finished sample "
                              "(a stream would break the lines apart): use stream=false with format=jsonl")

    def records_cuda_graph(self, device_type: str) -> bool:
        """Whether decoding replays a recorded CUDA graph: cuda_graph=auto does on CUDA with the KV cache and
        without compile=true, whose Inductor code replays CUDA graphs of its own."""
        if self.cuda_graph == "true" and device_type != "cuda":
            raise ConfigError(f"cuda_graph=true needs a CUDA device (this one is {device_type}): use cuda_graph=auto")
        return self.cuda_graph == "true" or (self.cuda_graph == "auto" and device_type == "cuda"
                                             and self.use_kv_cache and not self.compile)


store_defaults("sample_settings", SampleConfig)  # config/sample.yaml starts from these


def read_prompts(cfg: SampleConfig) -> list[str]:
    """`prompt_file` (one prompt a line) when set, else `prompt` (one string or a list)."""
    if cfg.prompt_file is None:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    if not (path.is_file() or path.is_fifo()):  # a pipe is read to its end (prompt_file=/dev/stdin); /dev/zero has none
        what = "does not exist" if not path.exists() else "is a folder" if path.is_dir() else "is a device, not a file"
        raise ConfigError(f"prompt_file={path} {what}: give a UTF-8 text file, one prompt a line")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"prompt_file={path} cannot be read ({e.strerror or e}): fix its permissions") from None
    # a byte-order mark (Windows editors write one) is no part of the first prompt
    text = decode_utf8(data, f"prompt_file={path}").removeprefix("\ufeff")
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt_file={path} holds no prompt: write one prompt a line")
    return prompts


def main_sample(raw: DictConfig) -> None:
    cfg = typed(SampleConfig, raw, "")  # every setting typed and in range, paths with ~ expanded, before loading
    prompts = read_prompts(cfg)
    device = resolve_device(cfg.device)
    cuda_graph = cfg.records_cuda_graph(device.type)  # cuda_graph=true on a CPU is one line, before any loading
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer, _ = load_inference_model(cfg.out_dir, device, cfg.checkpoint, cfg.init_from)
    model.to_inference_dtype(dtype)  # half-size weights halve the memory read for every new token
    if cfg.compile:
        started = time.perf_counter()
        model.engine.compile()
        warm_up = torch.full((cfg.num_samples, 1), tokenizer.eot_id, device=device)
        for _ in model.engine.generate_tokens(warm_up, 2, temperature=0):  # greedy: the seeded sampling is untouched
            pass  # compile now, so the first sample's tokens/s are not the compiler's
        print(f"compiled the decoding step in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    elif cuda_graph:
        model.engine.use_cuda_graph()  # recorded at the first new token of a batch size: a step, not a compile
    block_size = model.config.block_size
    stream = cfg.stream if cfg.stream is not None else (cfg.format == "text" and cfg.num_samples == 1)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # one seed, the same text every time
    total = len(prompts) * cfg.num_samples
    for p, prompt in enumerate(prompts):
        prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        if len(prompt_ids) > block_size:
            print(f"warning: prompt {p + 1} is {len(prompt_ids)} tokens; keeping its last {block_size} (block_size)",
                  file=sys.stderr)
            prompt_ids = prompt_ids[-block_size:]
        if stream:
            print(f"--- sample {p + 1}/{total} (prompt {prompt!r}) ---")
            print(prompt, end="", flush=True)
        # the num_samples samples of a prompt are one batch: each new token reads the weights once for all
        decoders = [tokenizer.stream_decoder() for _ in range(cfg.num_samples)]
        pieces: list[list[str]] = [[] for _ in range(cfg.num_samples)]
        new_ids: list[list[int]] = [[] for _ in range(cfg.num_samples)]
        started = time.perf_counter()
        idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=device)
        for next_ids in model.engine.generate_tokens(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                                     cfg.top_p, cfg.use_kv_cache, generator):
            for row, token_id in enumerate(next_ids[:, 0].tolist()):
                new_ids[row].append(token_id)
                pieces[row].append(decoders[row].feed(token_id))
            if stream:
                print(pieces[0][-1], end="", flush=True)
        seconds = max(time.perf_counter() - started, 1e-9)
        for row in range(cfg.num_samples):
            pieces[row].append(decoders[row].flush())
            text = "".join(pieces[row])
            if cfg.format == "jsonl":
                print(json.dumps({"prompt": prompt, "sample": row, "text": text, "tokens": new_ids[row],
                                  "tokens_per_second": round(len(new_ids[row]) / seconds, 1)}, ensure_ascii=False))
            elif stream:
                print(pieces[row][-1])
            else:
                print(f"--- sample {p * cfg.num_samples + row + 1}/{total} (prompt {prompt!r}) ---")
                print(prompt + text)
        if cfg.format == "text":
            n_new = sum(len(ids) for ids in new_ids)
            print(f"[{n_new} tokens in {seconds:.2f}s, {n_new / seconds:.0f} tokens/s]", file=sys.stderr)


if __name__ == "__main__":
    from common.cli import hydra_entry

    hydra_entry("sample", "python sample.py", SampleConfig, main_sample, lambda cfg: "sampling stopped", result=True)
