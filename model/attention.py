"""Multi-head attention, written step by step, and the fused kernels that must agree with it.

`explicit_attention` is the whole mechanism of the seed articles on one screen: scores from
query . key, scaled by 1/sqrt(head_dim), the causal mask, softmax into weights, dropout, and the
context as the weighted sum of values. `MultiHeadAttention` wraps it with the learned
projections W_Q, W_K, W_V, the split into heads, the merge and W_O; it does self-attention
(queries, keys and values from the same sequence) or cross-attention (keys and values from
another one). The `sdpa` and `flash` backends compute the same numbers with fused kernels that
never materialise the T x T weights.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.kv_cache import KVCache
from model.positions import apply_rotary

ATTN_IMPLS = ("explicit", "sdpa", "flash")


def future_mask(T_q: int, T_k: int, device: torch.device) -> torch.Tensor:
    """True where query i may not look: keys after it. The T_q queries are the last T_q of the T_k
    positions (T_q < T_k when earlier keys come from a KV cache), hence the diagonal offset."""
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).triu(T_k - T_q + 1)  # (T_q, T_k)


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, one named step per line.

    query: (B, nh, T_q, hs); key, value: (B, nh, T_k, hs).
    Returns context (B, nh, T_q, hs) and the attention weights (B, nh, T_q, T_k).
    """
    head_dim = query.size(-1)
    # 1. scores: how well each query matches every key
    scores = query @ key.transpose(-2, -1)  # (B, nh, T_q, T_k)
    # 2. scale by 1/sqrt(head_dim), so the softmax does not saturate as head_dim grows
    scores = scores / math.sqrt(head_dim)
    # 3. causal mask: a query may not see keys in its future (-inf becomes weight 0)
    if causal:
        scores = scores.masked_fill(future_mask(query.size(-2), key.size(-2), query.device), float("-inf"))
    # 4. softmax over the keys: each row of weights sums to one
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T_q, T_k)
    # 5. dropout on the weights (training only), as in the original Transformer
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    # 6. context: the weighted sum of the value vectors
    context = weights @ value  # (B, nh, T_q, hs)
    return context, weights


def sdpa_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0) -> torch.Tensor:
    """The same as explicit_attention through torch's fused kernel (no weights returned)."""
    T_q, T_k = query.size(-2), key.size(-2)
    if causal and T_q != T_k:  # is_causal aligns the mask top-left; cached queries need bottom-right
        allowed = ~future_mask(T_q, T_k, query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=causal)


_flash_notice_given = False


def flash_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA restricted to the FlashAttention kernel, where one exists for this device, dtype and mask.

    Flash kernels exist on CUDA for fp16/bf16, with no mask or a square causal one. Elsewhere we
    say once, loudly, which kernel runs instead, rather than claim flash.
    """
    global _flash_notice_given
    T_q, T_k = query.size(-2), key.size(-2)
    square_or_unmasked = not causal or T_q == T_k or T_q == 1  # one cached query may see every key
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and square_or_unmasked:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p,
                                                  is_causal=causal and T_q == T_k)
    if not _flash_notice_given:
        _flash_notice_given = True
        warnings.warn(
            f"attn_impl=flash: no FlashAttention kernel for device={query.device.type} "
            f"dtype={str(query.dtype).removeprefix('torch.')} (T_q={T_q}, T_k={T_k}); using PyTorch SDPA's "
            "default kernel instead (same math, not flash). Flash needs CUDA with bfloat16 or float16.",
            stacklevel=2,
        )
    return sdpa_attention(query, key, value, causal, dropout_p)


FUSED = {"sdpa": sdpa_attention, "flash": flash_attention}


class MultiHeadAttention(nn.Module):
    """Multi-head attention with learned projections W_Q, W_K, W_V and W_O.

    Self-attention (causal by default) when only x is given; cross-attention (not causal unless
    asked) when `context` is given: queries from x, keys and values from context.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 attn_impl: str = "explicit", layer_idx: int = 0, qk_norm: bool = False):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.attn_impl = attn_impl
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.dropout = dropout
        self.W_Q = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_K = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_V = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_O = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        # QK-norm: RMS-normalise each head's queries and keys, so scores cannot blow up and
        # larger learning rates stay stable (Dehghani et al. 2023; modded-nanogpt)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = x.size()
        return x.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C): heads concatenated

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        causal: bool | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C); context: (B, S, C) for cross-attention. rotary: (cos, sin) of x's positions
        for RoPE. Returns the output (B, T, C) and, with return_weights (which forces the explicit
        path), the attention weights (B, nh, T, T_k)."""
        source = x if context is None else context
        causal = context is None if causal is None else causal
        query = self.split_heads(self.W_Q(x))  # (B, nh, T, hs)
        key = self.split_heads(self.W_K(source))  # (B, nh, T_k, hs)
        value = self.split_heads(self.W_V(source))  # (B, nh, T_k, hs)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        if rotary is not None:  # RoPE: rotate queries and keys by their positions
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        if kv_cache is not None:  # prepend the keys and values of earlier tokens
            key, value = kv_cache.update(self.layer_idx, key, value)  # (B, nh, T_past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.attn_impl == "explicit" or return_weights:
            attended, weights = explicit_attention(query, key, value, causal, dropout_p)  # context vectors
        else:
            attended = FUSED[self.attn_impl](query, key, value, causal, dropout_p)
        out = self.resid_dropout(self.W_O(self.merge_heads(attended)))  # (B, T, C)
        return out, weights
