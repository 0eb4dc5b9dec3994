"""Causal multi-head self-attention, written step by step.

`explicit_attention` is the whole mechanism of the seed articles on one screen: scores from
query . key, scaled by 1/sqrt(head_dim), the causal mask, softmax into weights, dropout, and the
context as the weighted sum of values. `MultiHeadAttention` wraps it with the learned
projections W_Q, W_K, W_V, the split into heads, the merge and W_O. The `sdpa` and `flash`
backends compute the same thing with fused kernels that never materialise the T x T weights.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_IMPLS = ("explicit", "sdpa", "flash")


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
    T_q, T_k, head_dim = query.size(-2), key.size(-2), query.size(-1)
    # 1. scores: how well each query matches every key
    scores = query @ key.transpose(-2, -1)  # (B, nh, T_q, T_k)
    # 2. scale by 1/sqrt(head_dim) so the softmax does not saturate as head_dim grows
    scores = scores / math.sqrt(head_dim)
    # 3. causal mask: query i may not see keys in its future. The queries are the last T_q
    #    positions of the T_k keys (T_q < T_k when earlier keys are cached), hence the offset.
    if causal:
        future = torch.ones(T_q, T_k, dtype=torch.bool, device=query.device).triu(T_k - T_q + 1)
        scores = scores.masked_fill(future, float("-inf"))
    # 4. softmax over the keys: each row of weights sums to one
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T_q, T_k)
    # 5. dropout on the weights (training only), as in the original Transformer
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    # 6. context: the weighted sum of the value vectors
    context = weights @ value  # (B, nh, T_q, hs)
    return context, weights


_flash_notice_given = False


def _flash_attention(query, key, value, dropout_p: float) -> torch.Tensor:
    """SDPA restricted to the FlashAttention kernel where one exists for this device and dtype.

    Flash kernels exist on CUDA for fp16/bf16 only. Elsewhere we say once, loudly, which kernel
    runs instead, rather than claim flash.
    """
    global _flash_notice_given
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=True)
    if not _flash_notice_given:
        _flash_notice_given = True
        warnings.warn(
            f"attn_impl=flash: no FlashAttention kernel for device={query.device.type} "
            f"dtype={str(query.dtype).removeprefix('torch.')}; using PyTorch SDPA's default kernel "
            "(same math, not flash). Flash needs CUDA with bfloat16 or float16.",
            stacklevel=3,
        )
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=True)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with learned projections W_Q, W_K, W_V and W_O."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 attn_impl: str = "explicit"):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.attn_impl = attn_impl
        self.dropout = dropout
        self.W_Q = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_K = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_V = nn.Linear(n_embd, n_embd, bias=bias)
        self.W_O = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = x.size()
        return x.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C): heads concatenated

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: (B, T, C) -> (B, T, C); with return_weights, also the weights (B, nh, T, T)."""
        query = self.split_heads(self.W_Q(x))  # (B, nh, T, hs)
        key = self.split_heads(self.W_K(x))  # (B, nh, T, hs)
        value = self.split_heads(self.W_V(x))  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.attn_impl == "explicit" or return_weights:
            context, weights = explicit_attention(query, key, value, causal=True, dropout_p=dropout_p)
        elif self.attn_impl == "sdpa":
            context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=True)
        else:
            context = _flash_attention(query, key, value, dropout_p)
        out = self.resid_dropout(self.W_O(self.merge_heads(context)))  # (B, T, C)
        return (out, weights) if return_weights else out
