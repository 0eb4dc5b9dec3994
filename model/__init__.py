"""A nanoGPT-style decoder built from explicit causal multi-head self-attention: `from model import GPT, GPTConfig`."""
from model.config import GPTConfig
from model.gpt import GPT

__all__ = ["GPT", "GPTConfig"]
