"""Multi-head attention, written step by step, and the fused kernels that must agree with it.

`explicit_attention` is the whole mechanism of the seed articles on one screen: scores, scale, causal mask,
softmax weights, dropout and context. `MultiHeadAttention` wraps it with the learned projections W_Q, W_K, W_V,
the split into heads, RoPE, the KV cache, the merge and W_O, for self- or cross-attention. `tiled_attention`
(below) computes the same numbers in tiles, as flash does, in plain PyTorch; the `sdpa` and `flash`
backends, at the end, with fused kernels. None of the three materialises the T x T weights.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from model.additive import AdditiveScore
from model.config import GPTConfig

Positions = tuple[torch.Tensor, torch.Tensor]  # where the queries (T_q,) and the keys (T_k,) sit
ScoreFunction = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]  # (query, key, causal) -> scores


def last_positions(T_q: int, T_k: int, device: torch.device) -> Positions:
    """Without a KV cache: the T_q queries are the last T_q of the T_k key positions."""
    return torch.arange(T_k - T_q, T_k, device=device), torch.arange(T_k, device=device)


def future_mask(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """True where a query may not look: the keys at positions after its own -> (T_q, T_k)."""
    return key_positions[None, :] > query_positions[:, None]


def dot_product_scores(query: torch.Tensor, key: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Scaled dot-product scores (Vaswani et al. 2017): query (B, nh, T_q, hs), key (B, nh, T_k, hs) ->
    (B, nh, T_q, T_k). Every pair is scored, causal or not: one matmul costs less than skipping the masked half."""
    head_dim = query.size(-1)
    # 1. scores: how well each query matches every key
    scores = query @ key.transpose(-2, -1)  # (B, nh, T_q, T_k)
    # 2. scale by 1/sqrt(head_dim), so the softmax does not saturate as head_dim grows
    scores = scores / math.sqrt(head_dim)
    return scores


def explicit_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool = True,
                       dropout_p: float = 0.0, score: ScoreFunction = dot_product_scores,
                       positions: Positions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention, one named step per line. query: (B, nh, T_q, hs); key, value: (B, nh, T_k, hs).
    positions: where the queries and keys sit, for the causal mask (default: the queries are the last
    T_q of the T_k positions). Returns context (B, nh, T_q, hs) and the weights (B, nh, T_q, T_k).
    The same steps a tile of queries and keys at a time, never forming the T_q x T_k weights: tiled_attention."""
    # 1-2. scores: how well each query matches every key (dot_product_scores or additive_scores)
    scores = score(query, key, causal=causal)  # (B, nh, T_q, T_k)
    # 3. causal mask: a query may not see keys in its future (-inf becomes weight 0)
    if causal:
        future = future_mask(*(positions or last_positions(query.size(-2), key.size(-2), query.device)))
        scores = scores.masked_fill(future, float("-inf"))
    # 4. softmax over the keys: each row of weights sums to one
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T_q, T_k)
    # 5. dropout on the weights (training only), as in the original Transformer
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    # 6. context: the weighted sum of the value vectors
    context = weights @ value  # (B, nh, T_q, hs)
    return context, weights


class Rotary(nn.Module):
    """RoPE (Su et al. 2021): each pair (x[i], x[i + hs/2]) of a query or key is rotated by an angle
    proportional to its position, so query . key depends only on the distance between them."""

    def __init__(self, head_dim: int, n_positions: int, base: float = 10000.0):
        super().__init__()
        # head_dim is even (GPTConfig checks it); the angles in float64, kept in fp32 whatever the weights' dtype
        frequency = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)
        angle = torch.arange(n_positions, dtype=torch.float64)[:, None] * frequency  # (P, hs/2)
        self.register_buffer("cos", angle.cos().float(), persistent=False)
        self.register_buffer("sin", angle.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, nh, T, hs) at positions (T,), 0..T-1 by default -> x rotated, in x's dtype."""
        if positions is None:
            positions = torch.arange(x.size(-2), device=x.device)
        cos, sin = self.cos[positions], self.sin[positions]  # (T, hs/2)
        x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class KVCache:
    """The keys and values of the tokens already seen, per layer: a new token's query attends to them instead of
    recomputing the prefix. Fixed-size buffers written in place, so every decoding step has the same shapes at the
    same addresses and compiles to one fixed program (a CUDA graph on a GPU). Unwritten slots lie after every query."""

    def __init__(self, shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: torch.device):
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (n_layer, B, nh, max_length, hs)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.key_positions = torch.arange(shape[3], device=device)  # (max_length,): slot j holds position j
        for buffer in (self.keys, self.values, self.key_positions):
            torch._dynamo.mark_static_address(buffer)  # a CUDA graph may write into them

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new key, value (B, nh, T, hs) of `layer` at `positions` (T,); return every
        slot's keys and values, (B, nh, max_length, hs), the unwritten ones included."""
        self.keys[layer].index_copy_(2, positions, key)
        self.values[layer].index_copy_(2, positions, value)
        return self.keys[layer], self.values[layer]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with learned projections W_Q, W_K, W_V and W_O: self-attention (causal by default) when
    only x is given; cross-attention (not causal unless asked) when `context` is given: queries from x, keys and
    values from context. Built from a GPTConfig, by hand too: MultiHeadAttention(GPTConfig(n_embd=64, n_head=4))."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        n_embd = config.n_embd
        self.n_head = config.n_head
        self.head_dim = n_embd // config.n_head
        self.attn_impl = config.attn_impl
        self.attn_tile = config.attn_tile  # queries and keys per tile of attn_impl=tiled
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.dropout = config.dropout
        self.W_Q = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.W_K = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.W_V = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.W_O = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm: RMS-normalise each head's queries and keys, so scores cannot blow up and
        # larger learning rates stay stable (Dehghani et al. 2023; modded-nanogpt)
        self.q_norm = nn.RMSNorm(self.head_dim) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if config.qk_norm else None
        self.rotary = Rotary(self.head_dim, config.block_size) if config.pos_encoding == "rope" else None
        # how a query scores a key: query . key / sqrt(head_dim), or additive with its own parameters
        self.score: ScoreFunction = dot_product_scores
        if config.attn_score == "additive":
            self.score = AdditiveScore(self.n_head, self.head_dim, config.attn_dim or self.head_dim)
        self.head_mask: torch.Tensor | None = None  # (nh,): 0 silences a head (heads/metrics.py: ablate_heads)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = x.size()
        return x.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C): heads concatenated

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool | None = None,
                kv_cache: KVCache | None = None, positions: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C); context: (B, S, C) for cross-attention. positions (T,): where x's tokens sit, 0..T-1 by
        default: RoPE's angles, and with kv_cache the slots they are written to. Returns the output (B, T, C) and,
        with return_weights (which forces the explicit path), the weights (B, nh, T, T_k) (T_k: the cache's length)."""
        source = x if context is None else context
        causal = context is None if causal is None else causal
        query = self.split_heads(self.W_Q(x))  # (B, nh, T, hs)
        key = self.split_heads(self.W_K(source))  # (B, nh, T_k, hs)
        value = self.split_heads(self.W_V(source))  # (B, nh, T_k, hs)
        if self.q_norm is not None:  # in its gains' dtype, as CUDA autocast runs it (CPU autocast gave it bf16)
            gains = self.q_norm.weight.dtype
            query, key = self.q_norm(query.to(gains)), self.k_norm(key.to(gains))
        if self.rotary is not None:  # RoPE: rotate queries and keys by their positions
            query, key = self.rotary(query, positions), self.rotary(key, positions)
        # one dtype for all three, the one autocast gave the projections: CUDA autocast runs the
        # QK-norm in fp32, and fp32 queries would send the fused kernels off flash
        query, key = query.to(value.dtype), key.to(value.dtype)
        attend_positions = None  # the queries are the last T of the T_k keys
        if kv_cache is not None:  # store this step's keys and values; attend to every slot of the cache
            key, value = kv_cache.update(self.layer_idx, key, value, positions)  # (B, nh, max_length, hs)
            attend_positions = (positions, kv_cache.key_positions)  # the mask hides the slots not written yet
        dropout_p = self.dropout if self.training else 0.0
        if self.attn_impl == "explicit" or return_weights:
            attended, weights = explicit_attention(query, key, value, causal, dropout_p, self.score, attend_positions)
        elif self.attn_impl == "tiled":  # the flash algorithm in plain PyTorch: explicit's steps, tile by tile
            attended = tiled_attention(query, key, value, causal, dropout_p, attend_positions, tile=self.attn_tile)
            weights = None
        else:  # the fused kernels never form the weights
            attended, weights = FUSED[self.attn_impl](query, key, value, causal, dropout_p, attend_positions), None
        if self.head_mask is not None:  # ablation: a silenced head contributes nothing to W_O's input
            attended = attended * self.head_mask.view(1, -1, 1, 1).to(attended.dtype)
        out = self.resid_dropout(self.W_O(self.merge_heads(attended)))  # (B, T, C)
        return out, weights


# --- tiled attention (model.attn_impl=tiled): the flash algorithm (Dao et al. 2022) in plain PyTorch -----------
#
# explicit_attention scores every query against every key at once: the scores and the weights
# are B x n_head x T_q x T_k numbers, kept for the backward pass, so its memory grows as T^2. Here the queries and the
# keys go in tiles of `tile` positions. A query tile meets the key tiles one after the other and keeps, for each query,
# three running values: the row maximum m of the scores so far, the sum l of exp(score - m) and the context c, the sum
# of exp(score - m) x value. Only one tile x tile block of scores exists at a time; the T x T weights never do.
#
# Why it is exact: softmax(s)_j = exp(s_j - m) / sum_i exp(s_i - m) for any constant m (the row maximum keeps exp from
# overflowing). When a key tile raises a row's maximum from m to m', multiplying l and c by exp(m - m') turns each
# earlier term exp(s_j - m) into exp(s_j - m'); so after the last key tile, l and c are the sums over all keys with the
# row's true maximum, and c / l is softmax(scores) @ value: the same numbers, added in another order (a few ulps apart).
# Dropout drops each exp(s_j - m) as explicit drops each weight, an independent keep-or-zero, the kept ones scaled by
# 1/(1-p); the later rescaling and the division by l multiply a whole row alike, so each weight is dropped with the same
# probability and scaled the same way as on the explicit path (the same distribution; not the same random draws).


def tiled_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool = True,
                    dropout_p: float = 0.0, positions: Positions | None = None, *, tile: int) -> torch.Tensor:
    """explicit_attention's context, one query tile at a time, without the weights. query: (B, nh, T_q, hs);
    key, value: (B, nh, T_k, hs); positions as in explicit_attention; tile: queries and keys per tile
    (model.attn_tile) -> context (B, nh, T_q, hs)."""
    T_q, T_k = query.size(-2), key.size(-2)
    query_positions, key_positions = positions or last_positions(T_q, T_k, query.device)
    # with autograd: keep only each query tile's inputs and recompute its scores in the backward pass, as flash does,
    # so that training memory grows as T, not T^2; with dropout, the recomputation replays the same random draws
    attend = query_tile_attention
    if torch.is_grad_enabled():
        attend = partial(checkpoint, query_tile_attention, use_reentrant=False, preserve_rng_state=dropout_p > 0)
    contexts = []
    for start in range(0, T_q, tile):
        end = min(start + tile, T_q)
        # causal: the keys after this tile's last query lie in the future of all its queries and are skipped. The
        # shapes say where they start when the queries are the last T_q of the T_k keys; with given positions (the
        # KV cache) only the positions' values do, so every key is visited and the mask hides the future ones
        seen = T_k - T_q + end if causal and positions is None else T_k
        contexts.append(attend(query[:, :, start:end], key[:, :, :seen], value[:, :, :seen], causal, dropout_p,
                               query_positions[start:end], key_positions[:seen], tile))  # (B, nh, tile, hs)
    return torch.cat(contexts, dim=-2)  # (B, nh, T_q, hs)


def query_tile_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool, dropout_p: float,
                         query_positions: torch.Tensor, key_positions: torch.Tensor, tile: int) -> torch.Tensor:
    """One tile of queries (B, nh, t_q, hs) at query_positions (t_q,) against the keys and values (B, nh, T_k, hs)
    at key_positions (T_k,), a key tile at a time -> its context (B, nh, t_q, hs)."""
    B, nh, t_q, _ = query.shape
    hs = value.size(-1)  # the context has the values' width (which may differ from the queries' and keys')
    # the running values in fp32 at least (as flash keeps them, also when the inputs are bf16)
    running = dict(dtype=torch.promote_types(query.dtype, torch.float32), device=query.device)
    row_max = torch.full((B, nh, t_q, 1), float("-inf"), **running)  # m: the largest score so far
    row_sum = torch.zeros(B, nh, t_q, 1, **running)  # l: the sum of exp(score - m) so far
    context = torch.zeros(B, nh, t_q, hs, **running)  # c: the sum of exp(score - m) x value so far
    for start in range(0, key.size(-2), tile):
        key_tile, value_tile = key[:, :, start:start + tile], value[:, :, start:start + tile]  # (B, nh, t_k, hs)
        # 1-2. scores of this tile: query . key / sqrt(head_dim), explicit_attention's own score function
        scores = dot_product_scores(query, key_tile).to(row_sum.dtype)  # (B, nh, t_q, t_k)
        # 3. causal mask: a query may not see keys in its future (-inf becomes weight 0)
        if causal:
            scores = scores.masked_fill(future_mask(query_positions, key_positions[start:start + tile]), float("-inf"))
        # 4a. the running row maximum; m only keeps exp from overflowing, the result does not depend on it,
        # so no gradient flows through it (as none flows through the maximum inside torch.softmax)
        new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True).detach())  # (B, nh, t_q, 1)
        rescale = torch.exp(row_max - new_max)  # (B, nh, t_q, 1): exp(m - m') <= 1, 0 at the first tile
        # 4b. this tile's weights before the softmax's division: exp(score - m'), and the rescaled running sum
        weights = torch.exp(scores - new_max)  # (B, nh, t_q, t_k)
        row_sum = row_sum * rescale + weights.sum(dim=-1, keepdim=True)  # (B, nh, t_q, 1)
        # 5. dropout on the weights (training only); the running sum above keeps every weight, as softmax does
        weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
        # 6. the rescaled running context plus this tile's weighted sum of values (the matmul in value's dtype)
        context = context * rescale + weights.to(value.dtype) @ value_tile  # (B, nh, t_q, hs)
        row_max = new_max
    # 4c. the softmax's division, once per row at the end: context / l = weights @ value
    return (context / row_sum).to(value.dtype)  # (B, nh, t_q, hs)


# --- the fused kernels: explicit_attention's numbers without forming the T x T weights ----------

def sdpa_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0,
                   positions: Positions | None = None) -> torch.Tensor:
    """The same as explicit_attention through torch's fused kernel (no weights returned)."""
    T_q, T_k = query.size(-2), key.size(-2)
    if causal and (positions is not None or T_q != T_k):  # is_causal is only the square T x T mask
        allowed = ~future_mask(*(positions or last_positions(T_q, T_k, query.device)))
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=causal)


def flash_kernel_exists(device: torch.device, dtype: torch.dtype, head_dim: int, square_or_unmasked: bool,
                        capability: tuple[int, int] | None = None) -> bool:
    """Whether PyTorch has a FlashAttention kernel for these inputs. capability: the GPU's, looked up if None."""
    return (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and square_or_unmasked
            and head_dim % 8 == 0 and head_dim <= 256
            and (capability or torch.cuda.get_device_capability(device)) >= (8, 0))  # Ampere or newer: not V100, T4


_flash_notice_given = False  # flash_attention names its fallback once per process, not at every call


def flash_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0,
                    positions: Positions | None = None) -> torch.Tensor:
    """SDPA restricted to the FlashAttention kernel where one exists for this device, dtype and mask;
    where none exists, we say once, loudly, which kernel runs instead, rather than claim flash."""
    global _flash_notice_given
    T_q, T_k = query.size(-2), key.size(-2)
    square_or_unmasked = not causal or (positions is None and T_q == T_k)
    if flash_kernel_exists(query.device, query.dtype, query.size(-1), square_or_unmasked):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=causal)
    if not _flash_notice_given:
        _flash_notice_given = True
        warnings.warn(
            f"attn_impl=flash: no FlashAttention kernel for device={query.device.type} "
            f"dtype={str(query.dtype).removeprefix('torch.')} (T_q={T_q}, T_k={T_k}"
            f"{', KV-cache mask' if positions is not None else ''}, head_dim={query.size(-1)}); using PyTorch SDPA's "
            "default kernel instead (same math, not flash). Flash needs a CUDA GPU of compute capability 8.0 or newer, "
            "bfloat16 or float16, head_dim a multiple of 8 up to 256, and no mask but the square causal one.",
            stacklevel=2)
    return sdpa_attention(query, key, value, causal, dropout_p, positions)


FUSED = {"sdpa": sdpa_attention, "flash": flash_attention}
