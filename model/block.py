"""One transformer block: pre-norm attention, then pre-norm MLP, each added to the residual stream."""
from __future__ import annotations

import torch
import torch.nn as nn

from model.attention import MultiHeadAttention
from model.kv_cache import KVCache


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    """layernorm (GPT-2) or rmsnorm (no centring, no bias: cheaper, as in Llama and modded-nanogpt)."""
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else nn.RMSNorm(dim)


class ReLUSquared(nn.Module):
    """relu(x)^2: as good as GELU or better at small scale, and cheaper (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU (or ReLU^2), project back."""

    def __init__(self, n_embd: int, dropout: float, bias: bool, activation: str = "gelu"):
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else ReLUSquared()
        self.down = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, attn_impl: str, layer_idx: int,
                 norm: str = "layernorm", qk_norm: bool = False, activation: str = "gelu",
                 attn_score: str = "dot", attn_dim: int | None = None):
        super().__init__()
        self.ln_1 = make_norm(norm, n_embd, bias)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout, bias, attn_impl, layer_idx, qk_norm, attn_score, attn_dim)
        self.ln_2 = make_norm(norm, n_embd, bias)
        self.mlp = MLP(n_embd, dropout, bias, activation)

    def forward(self, x: torch.Tensor, rotary=None, kv_cache: KVCache | None = None, positions: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), rotary=rotary, kv_cache=kv_cache, positions=positions,
                                      return_weights=return_weights)
        x = x + attended  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, weights
