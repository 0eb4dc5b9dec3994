"""One transformer block: pre-norm attention, then pre-norm MLP, each added to the residual stream."""
from __future__ import annotations

import torch
import torch.nn as nn

from model.attention import MultiHeadAttention
from model.config import GPTConfig
from model.kv_cache import KVCache


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    """layernorm (GPT-2) or rmsnorm (no centring, no bias: cheaper, as in Llama and modded-nanogpt)."""
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else nn.RMSNorm(dim)


class ReLUSquared(nn.Module):
    """relu(x)^2: as good as GELU or better at small scale, and cheaper (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


def make_activation(kind: str) -> nn.Module:
    """gelu (exact, erf), gelu_tanh (the tanh approximation GPT-2 was trained with: its weights
    expect it, and exact GELU shifts their logits) or relu2."""
    if kind == "relu2":
        return ReLUSquared()
    return nn.GELU(approximate="tanh" if kind == "gelu_tanh" else "none")


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU (or ReLU^2), project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = make_activation(config.mlp)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config.norm, config.n_embd, config.bias)
        self.attn = MultiHeadAttention(config, layer_idx)
        self.ln_2 = make_norm(config.norm, config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rotary=None, kv_cache: KVCache | None = None, positions: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), rotary=rotary, kv_cache=kv_cache, positions=positions,
                                      return_weights=return_weights)
        x = x + attended  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, weights
