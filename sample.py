"""Generate text from a trained checkpoint.

    python sample.py                                  # one sample per default prompt, from out/
    python sample.py prompt="ROMEO:" num_samples=3 temperature=0.7
    python sample.py prompt="中国" max_new_tokens=100 top_k=50 out_dir=out
    python sample.py 'prompt=["", "KING:"]'           # several prompts; "" starts from <|endoftext|>
"""
from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from model.generation import sample_next_token
from trainer.checkpoint import CheckpointError, load_model
from trainer.runtime import ConfigError, resolve_device


def check_settings(cfg: DictConfig) -> None:
    """Catch bad sampling settings before the model is loaded."""
    try:
        sample_next_token(torch.zeros(1, 2), cfg.temperature, cfg.top_k, cfg.top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key in ("num_samples", "max_new_tokens"):
        minimum = 1 if key == "num_samples" else 0
        if not isinstance(cfg[key], int) or cfg[key] < minimum:
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= {minimum}")


def prompts_of(cfg: DictConfig) -> list[str]:
    """`prompt` is one string or a list of them."""
    return [str(p) for p in cfg.prompt] if isinstance(cfg.prompt, ListConfig) else [str(cfg.prompt)]


def sample(cfg: DictConfig) -> list[tuple[str, str]]:
    """(prompt, text) for num_samples samples of every prompt; text includes the prompt."""
    check_settings(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer, _ = load_model(cfg.out_dir, device)
    block_size = model.config.block_size
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    results = []
    for prompt in prompts_of(cfg):
        prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        if len(prompt_ids) > block_size:
            print(f"warning: the prompt is {len(prompt_ids)} tokens; keeping its last {block_size} (block_size)", file=sys.stderr)
            prompt_ids = prompt_ids[-block_size:]
        idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=device)
        out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.use_kv_cache, generator)
        for row in out.tolist():
            # <|endoftext|> separates documents: show it as a line break, not as markup
            text = "\n".join(tokenizer.decode(part) for part in split_at(row, tokenizer.eot_id)).strip("\n")
            results.append((prompt, text))
    return results


def split_at(ids: list[int], separator: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for i in ids:
        if i == separator:
            parts.append([])
        else:
            parts[-1].append(i)
    return parts


@hydra.main(config_path="config", config_name="sample", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        results = sample(cfg)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for i, (prompt, text) in enumerate(results):
        print(f"--- sample {i + 1}/{len(results)} (prompt {prompt!r}) ---")
        print(text)


if __name__ == "__main__":
    main()
