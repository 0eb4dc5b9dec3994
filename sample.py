"""Generate text from a trained checkpoint.

    python sample.py                                  # 3 samples from out/
    python sample.py prompt="ROMEO:" num_samples=1 temperature=0.7
    python sample.py prompt="中国" max_new_tokens=100 top_k=50 out_dir=out
"""
from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig

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


def sample(cfg: DictConfig) -> list[str]:
    check_settings(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer, _ = load_model(cfg.out_dir, device)
    prompt_ids = tokenizer.encode(str(cfg.prompt)) or [tokenizer.eot_id]
    block_size = model.config.block_size
    if len(prompt_ids) > block_size:
        print(f"warning: the prompt is {len(prompt_ids)} tokens; keeping its last {block_size} (block_size)", file=sys.stderr)
        prompt_ids = prompt_ids[-block_size:]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=device)
    out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator=generator)
    texts = []
    for row in out.tolist():
        ids = [t for t in row if t != tokenizer.eot_id] if cfg.prompt == "" else row
        texts.append(tokenizer.decode(ids))
    return texts


@hydra.main(config_path="config", config_name="sample", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        texts = sample(cfg)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}/{len(texts)} ---")
        print(text)


if __name__ == "__main__":
    main()
