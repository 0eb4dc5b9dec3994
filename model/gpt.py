"""The GPT: token embeddings plus a positional encoding, a stack of pre-norm blocks (attention, then MLP, each
added to the residual stream), a final norm and a tied LM head; attention maps; generate (model/generation.py)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import KVCache, MultiHeadAttention
from model.config import GPTConfig
from model.generation import Engine


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The seed articles' positional encoding (Vaswani et al. 2017), added to the token embeddings:
    PE[pos, 2i] = sin(pos / base^(2i/dim)), PE[pos, 2i+1] = cos(pos / base^(2i/dim)) -> (n_positions, dim)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    frequency = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angle = position * frequency  # (P, ceil(dim/2))
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    """layernorm (GPT-2) or rmsnorm (no centring, no bias: cheaper, as in Llama and modded-nanogpt)."""
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else nn.RMSNorm(dim)


class ReLUSquared(nn.Module):
    """relu(x)^2: as good as GELU or better at small scale, and cheaper (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU (or ReLU^2), project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # gelu is exact (erf); gelu_tanh, the tanh approximation GPT-2 was trained with: its weights expect it
        approximate = "tanh" if config.mlp == "gelu_tanh" else "none"
        self.act = ReLUSquared() if config.mlp == "relu2" else nn.GELU(approximate=approximate)
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

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, positions: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), kv_cache=kv_cache, positions=positions,
                                      return_weights=return_weights)
        x = x + attended  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, weights


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # one trained vector per position
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("sinusoids", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        # rope: no embedding; each attention layer rotates its queries and keys (model/attention.py's Rotary)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer_idx) for layer_idx in range(config.n_layer))
        self.ln_f = make_norm(config.norm, config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.engine = Engine(self)  # generation: the KV cache and the decoding step every generate reuses
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth; or start them at zero
        for block in self.blocks:
            for proj in (block.attn.W_O, block.mlp.down):
                if config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; learned position embeddings excluded by default, tied token embeddings counted once."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and hasattr(self, "wpe") else n

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None, return_weights: bool = False,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """idx: (B, T) -> final hidden states (B, T, C) and, with return_weights, each layer's attention weights
        (B, nh, T, T_k). positions (T,): where idx's tokens sit, 0..T-1 by default, or after those a cache holds."""
        B, T = idx.size()
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
            positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.wpe(positions)
        elif self.config.pos_encoding == "sinusoidal":  # added in fp32 (the table's), then one rounding to x's dtype
            x = (x + self.sinusoids[positions]).to(x.dtype)
        x = self.drop(x)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, kv_cache, positions, return_weights)
            all_weights.append(weights)
        return self.ln_f(x), all_weights

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx: (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets given."""
        x, _ = self.hidden_states(idx)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Every head's attention weights for idx (B, T) -> (n_layer, B, n_head, T, T): through
        explicit_attention whatever attn_impl is (fused kernels never form them), in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        _, weights = self.hidden_states(idx, return_weights=True)
        self.train(was_training)
        return torch.stack(weights)

    def next_token_logits(self, idx: torch.Tensor, kv_cache: KVCache | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (B, vocab) of the token that follows idx (B, T); kv_cache and positions as in
        hidden_states. The step the Engine repeats for every new token (and compiles)."""
        x, _ = self.hidden_states(idx, kv_cache, positions=positions)
        return self.lm_head(x[:, -1, :])

    def to_inference_dtype(self, dtype: torch.dtype) -> GPT:
        """Cast the weights to `dtype` for generation (bf16 halves the memory each new token reads), but not the
        position tables: sines, cosines and RoPE's angles keep fp32, and their sum or rotation is rounded once."""
        for param in self.parameters():
            param.data = param.data.to(dtype)  # in place: the tied head keeps sharing the embedding
        return self

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_kv_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens generated tokens -> (B, T + max_new_tokens); temperature 0
        is greedy. One token at a time: see Engine.generate_tokens, also for what happens past block_size."""
        new = self.engine.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, use_kv_cache, generator)
        return torch.cat([idx, *new], dim=1)
