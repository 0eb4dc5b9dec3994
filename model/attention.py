"""Multi-head attention, written step by step, and the fused kernels that must agree with it.

`explicit_attention` is the whole mechanism of the seed articles on one screen: scores from
query . key, scaled by 1/sqrt(head_dim), the causal mask, softmax into weights, dropout, and the
context as the weighted sum of values. `MultiHeadAttention` wraps it with the learned
projections W_Q, W_K, W_V, the split into heads, the merge and W_O; it does self-attention
(queries, keys and values from the same sequence) or cross-attention (keys and values from
another one). The `sdpa` and `flash` backends compute the same numbers with fused kernels that
never materialise the T x T weights.

The scores are scaled dot products (`dot_product_scores`) or, with attn_score="additive",
Bahdanau's v . tanh(W_q q + W_k k) per head (`additive_scores`); the mask, softmax, dropout and
weighted sum of values that follow are the same. Additive scores run on the explicit path only.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.kv_cache import KVCache
from model.positions import apply_rotary

ATTN_IMPLS = ("explicit", "sdpa", "flash")
ATTN_SCORES = ("dot", "additive")
# additive scores: at most this many bytes of (query, key) pair vectors at a time. On a CPU, chunks
# that fit in its cache run fastest: a CPU-preset training step took ~0.6 s with 4-8 MiB chunks,
# 1.1 s with 64 MiB and 1.7 s with all pairs at once (dot products: ~0.35 s; 2-core EPYC, bf16).
# A GPU has no such cache to fit and one query row of the GPU default is 24 MiB of pairs, so there
# the chunks are as large as memory comfortably allows: few chunks, few Python-level iterations.
ADDITIVE_CHUNK_BYTES = {"cpu": 8 * 2**20, "cuda": 512 * 2**20}


def additive_chunk_bytes(device: torch.device) -> int:
    """How many bytes of pair vectors one chunk of additive scores may hold on `device`."""
    return ADDITIVE_CHUNK_BYTES.get(device.type, ADDITIVE_CHUNK_BYTES["cuda"])


Positions = tuple[torch.Tensor, torch.Tensor]  # where the queries (T_q,) and the keys (T_k,) sit


def last_positions(T_q: int, T_k: int, device: torch.device) -> Positions:
    """Without a KV cache: the T_q queries are the last T_q of the T_k key positions."""
    return torch.arange(T_k - T_q, T_k, device=device), torch.arange(T_k, device=device)


def future_mask(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """True where a query may not look: the keys at positions after its own -> (T_q, T_k)."""
    return key_positions[None, :] > query_positions[:, None]


ScoreFunction = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def dot_product_scores(query: torch.Tensor, key: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Scaled dot-product scores (Vaswani et al. 2017): query . key / sqrt(head_dim).

    query: (B, nh, T_q, hs); key: (B, nh, T_k, hs). Returns scores (B, nh, T_q, T_k). Every pair
    is scored, causal or not: one matmul costs less than skipping the masked half.
    """
    head_dim = query.size(-1)
    # 1. scores: how well each query matches every key
    scores = query @ key.transpose(-2, -1)  # (B, nh, T_q, T_k)
    # 2. scale by 1/sqrt(head_dim), so the softmax does not saturate as head_dim grows
    scores = scores / math.sqrt(head_dim)
    return scores


def additive_scores(query: torch.Tensor, key: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, v: torch.Tensor,
                    causal: bool = True, chunk_bytes: int | None = None) -> torch.Tensor:
    """Additive scores (Bahdanau et al. 2015), per head: score(q_i, k_j) = v . tanh(W_q q_i + W_k k_j).

    query: (B, nh, T_q, hs); key: (B, nh, T_k, hs); W_q, W_k: (nh, hs, attn_dim); v: (nh, attn_dim).
    Returns scores (B, nh, T_q, T_k); with causal, the pairs the mask hides are not computed (-inf).
    chunk_bytes: the pair vectors held at a time (None: additive_chunk_bytes of the device).
    """
    chunk_bytes = chunk_bytes or additive_chunk_bytes(query.device)
    # 1. project the queries and the keys into the attention space, once
    query_proj = query @ W_q  # (B, nh, T_q, attn_dim)
    key_proj = key @ W_k  # (B, nh, T_k, attn_dim)
    # 2. scores: v . tanh(W_q q_i + W_k k_j) of every (query, key) pair, a chunk of queries at a time
    scores = AdditivePairScores.apply(query_proj, key_proj, v, causal, chunk_bytes)  # (B, nh, T_q, T_k)
    return scores


def query_chunks(T_q: int, T_k: int, rows: int, causal: bool) -> Iterator[tuple[slice, int]]:
    """Chunks of `rows` queries, each with how many keys it sees: all T_k, or with causal those up
    to its last query (the queries are the last T_q of the T_k positions)."""
    for start in range(0, T_q, rows):
        stop = min(start + rows, T_q)
        yield slice(start, stop), stop + T_k - T_q if causal else T_k


def chunk_rows(query_proj: torch.Tensor, T_k: int, chunk_bytes: int) -> int:
    """How many queries of query_proj (B, nh, T_q, attn_dim) one chunk of pair vectors with T_k keys
    holds in chunk_bytes (at least one)."""
    B, nh, T_q, attn_dim = query_proj.shape
    return min(T_q, max(1, chunk_bytes // (B * nh * T_k * attn_dim * query_proj.element_size())))


class AdditivePairScores(torch.autograd.Function):
    """scores[b, h, i, j] = v[h] . tanh(query_proj[b, h, i] + key_proj[b, h, j]), a chunk of queries at a time.

    The pair vectors x = query_proj_i + key_proj_j hold attn_dim numbers per score: all at once
    they would be B x nh x T_q x T_k x attn_dim numbers (256 MiB per layer for the CPU preset in
    fp32). One buffer of at most chunk_bytes holds a chunk's pairs and is reused by every chunk (a
    fresh large tensor per chunk page-faults: the broadcast add ran 4x slower). With causal, a
    chunk pairs its queries only with the keys up to its last query, about half the work. Autograd
    would keep every chunk's tanh for the backward pass, so the backward is written out: it
    recomputes each chunk from the saved projections, and training memory stays at one chunk too.

    tanh(x) = 2 sigmoid(2x) - 1, and PyTorch's CPU sigmoid is ~5x faster than its tanh in float32
    (measured), so with a = sigmoid(2x): v . tanh(x) = 2 v . a - sum(v), and its derivative in x
    is 4 v a (1 - a). The pairs are in the promoted dtype of the inputs and v: float32 under
    bf16/fp16 autocast.
    """

    @staticmethod
    def forward(ctx, query_proj, key_proj, v, causal, chunk_bytes):
        dtype = torch.promote_types(query_proj.dtype, v.dtype)
        with torch.autocast(query_proj.device.type, enabled=False):
            query_2x, key_2x, v = 2 * query_proj.to(dtype), 2 * key_proj.to(dtype), v.to(dtype)
            B, nh, T_q, T_k = *query_2x.shape[:3], key_2x.size(2)
            scores = query_2x.new_full((B, nh, T_q, T_k), float("-inf"))  # (B, nh, T_q, T_k)
            for chunk, n_keys, a in AdditivePairScores.sigmoids(query_2x, key_2x, causal, chunk_bytes):
                v_dot_a = (a.flatten(2, 3) @ v[:, :, None]).view(B, nh, -1, n_keys)  # (B, nh, rows, n_keys)
                scores[:, :, chunk, :n_keys] = 2 * v_dot_a - v.sum(-1)[:, None, None]  # v . tanh(x)
        ctx.save_for_backward(query_2x, key_2x, v)
        ctx.causal, ctx.chunk_bytes, ctx.dtypes = causal, chunk_bytes, (query_proj.dtype, key_proj.dtype)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):
        query_2x, key_2x, v = ctx.saved_tensors
        with torch.autocast(query_2x.device.type, enabled=False):
            grad_scores = grad_scores.to(v.dtype)  # (B, nh, T_q, T_k)
            grad_query, grad_key = torch.zeros_like(query_2x), torch.zeros_like(key_2x)  # (B, nh, T, attn_dim)
            grad_v_a = torch.zeros_like(v)  # (nh, attn_dim): sum of grad x a over pairs
            for chunk, n_keys, a in AdditivePairScores.sigmoids(query_2x, key_2x, ctx.causal, ctx.chunk_bytes):
                grad = grad_scores[:, :, chunk, :n_keys]  # (B, nh, rows, n_keys)
                grad_v_a += (grad.flatten(2)[:, :, None, :] @ a.flatten(2, 3)).sum(0)[:, 0]
                slopes = a.addcmul_(a, a, value=-1).mul_(grad[..., None])  # grad x a (1 - a), in place
                grad_query[:, :, chunk] = slopes.sum(-2)  # summed over the keys
                grad_key[:, :, :n_keys] += slopes.sum(-3)  # summed over the queries
            four_v = 4 * v[:, None, :]  # (nh, 1, attn_dim)
            grad_v = 2 * grad_v_a - grad_scores.sum((0, 2, 3))[:, None]  # d(2 v . a - sum(v)) / dv
        return (grad_query * four_v).to(ctx.dtypes[0]), (grad_key * four_v).to(ctx.dtypes[1]), grad_v, None, None

    @staticmethod
    def sigmoids(query_2x: torch.Tensor, key_2x: torch.Tensor, causal: bool,
                 chunk_bytes: int) -> Iterator[tuple[slice, int, torch.Tensor]]:
        """For each chunk of queries: its slice, how many keys it sees, and a = sigmoid(2 W_q q_i + 2 W_k k_j)
        of those pairs, (B, nh, rows, n_keys, attn_dim), in the one reused buffer."""
        B, nh, T_q, attn_dim = query_2x.shape
        T_k = key_2x.size(2)
        rows = chunk_rows(query_2x, T_k, chunk_bytes)
        buffer = query_2x.new_empty(B * nh * rows * T_k * attn_dim)
        for chunk, n_keys in query_chunks(T_q, T_k, rows, causal):
            shape = (B, nh, chunk.stop - chunk.start, n_keys, attn_dim)
            pairs = torch.add(query_2x[:, :, chunk, None, :], key_2x[:, :, None, :n_keys, :],
                              out=buffer[:math.prod(shape)].view(shape))  # 2 (W_q q_i + W_k k_j)
            yield chunk, n_keys, pairs.sigmoid_()


class AdditiveScore(nn.Module):
    """The learned parameters of additive scores, per head: W_q, W_k (head_dim -> attn_dim) and v (attn_dim).

    W_q and W_k start with variance 1/head_dim, so W_q q has the scale of q: with GPT's 0.02 the
    pair vectors would sit in tanh's linear range, where v . tanh(W_q q_i + W_k k_j) splits into a
    query part that the softmax cancels plus a key part (attention blind to the query). v starts
    at 0.02, like the other weights, so the first attention is near uniform, as with dot products.
    """

    def __init__(self, n_head: int, head_dim: int, attn_dim: int):
        super().__init__()
        self.W_q = nn.Parameter(torch.randn(n_head, head_dim, attn_dim) / math.sqrt(head_dim))
        self.W_k = nn.Parameter(torch.randn(n_head, head_dim, attn_dim) / math.sqrt(head_dim))
        self.v = nn.Parameter(0.02 * torch.randn(n_head, attn_dim))
        self.chunk_bytes: int | None = None  # None: by device (additive_chunk_bytes)

    def forward(self, query: torch.Tensor, key: torch.Tensor, causal: bool = True) -> torch.Tensor:
        return additive_scores(query, key, self.W_q, self.W_k, self.v, causal, self.chunk_bytes)


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    score: ScoreFunction = dot_product_scores,
    positions: Positions | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention, one named step per line; scaled dot-product scores unless `score` says otherwise.

    query: (B, nh, T_q, hs); key, value: (B, nh, T_k, hs). positions: where the queries and keys
    sit, for the causal mask (default: the queries are the last T_q of the T_k positions).
    Returns context (B, nh, T_q, hs) and the attention weights (B, nh, T_q, T_k).
    """
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


def sdpa_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0,
                   positions: Positions | None = None) -> torch.Tensor:
    """The same as explicit_attention through torch's fused kernel (no weights returned)."""
    T_q, T_k = query.size(-2), key.size(-2)
    if causal and (positions is not None or T_q != T_k):  # is_causal is only the square T x T mask
        allowed = ~future_mask(*(positions or last_positions(T_q, T_k, query.device)))
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=causal)


_flash_notice_given = False


def flash_kernel_exists(device: torch.device, dtype: torch.dtype, head_dim: int, square_or_unmasked: bool,
                        capability: tuple[int, int] | None = None) -> bool:
    """Whether PyTorch has a FlashAttention kernel for these inputs: CUDA at compute capability 8.0
    or newer (Ampere, Ada, Hopper; V100 and T4 have none), fp16 or bf16, head_dim a multiple of 8
    up to 256, and no mask but the square causal one. capability: the GPU's, looked up if None."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16) or not square_or_unmasked:
        return False
    if head_dim % 8 or head_dim > 256:
        return False
    return (capability or torch.cuda.get_device_capability(device)) >= (8, 0)


def flash_attention(query, key, value, causal: bool = True, dropout_p: float = 0.0,
                    positions: Positions | None = None) -> torch.Tensor:
    """SDPA restricted to the FlashAttention kernel, where one exists for this device, dtype and mask.

    Where none exists (flash_kernel_exists) we say once, loudly, which kernel runs instead, rather
    than claim flash.
    """
    global _flash_notice_given
    T_q, T_k = query.size(-2), key.size(-2)
    square_or_unmasked = not causal or (positions is None and T_q == T_k)
    if flash_kernel_exists(query.device, query.dtype, query.size(-1), square_or_unmasked):
        from torch.nn.attention import SDPBackend, sdpa_kernel

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
            stacklevel=2,
        )
    return sdpa_attention(query, key, value, causal, dropout_p, positions)


FUSED = {"sdpa": sdpa_attention, "flash": flash_attention}


class MultiHeadAttention(nn.Module):
    """Multi-head attention with learned projections W_Q, W_K, W_V and W_O.

    Self-attention (causal by default) when only x is given; cross-attention (not causal unless
    asked) when `context` is given: queries from x, keys and values from context.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 attn_impl: str = "explicit", layer_idx: int = 0, qk_norm: bool = False,
                 attn_score: str = "dot", attn_dim: int | None = None):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        if attn_score not in ATTN_SCORES:
            raise ValueError(f"attn_score={attn_score!r} is not one of {ATTN_SCORES}")
        if attn_score == "additive" and attn_impl != "explicit":
            raise ValueError(f"attn_score='additive' needs attn_impl='explicit', not {attn_impl!r}: "
                             "the fused kernels only compute dot-product scores")
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
        # how a query scores a key: query . key / sqrt(head_dim), or additive with its own parameters
        self.score: ScoreFunction = dot_product_scores
        if attn_score == "additive":
            self.score = AdditiveScore(n_head, self.head_dim, attn_dim or self.head_dim)

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
        positions: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C); context: (B, S, C) for cross-attention. rotary: (cos, sin) of x's positions
        for RoPE. With kv_cache, positions (T,) says where x's tokens go in it. Returns the output
        (B, T, C) and, with return_weights (which forces the explicit path), the attention weights
        (B, nh, T, T_k), T_k = the cache's length with a cache."""
        source = x if context is None else context
        causal = context is None if causal is None else causal
        query = self.split_heads(self.W_Q(x))  # (B, nh, T, hs)
        key = self.split_heads(self.W_K(source))  # (B, nh, T_k, hs)
        value = self.split_heads(self.W_V(source))  # (B, nh, T_k, hs)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        if rotary is not None:  # RoPE: rotate queries and keys by their positions
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        # one dtype for all three, the one autocast gave the projections: CUDA autocast runs the
        # QK-norm in fp32, and fp32 queries would send the fused kernels off flash
        query, key = query.to(value.dtype), key.to(value.dtype)
        attend_positions = None
        if kv_cache is not None:  # store this step's keys and values; attend to every slot of the cache
            key, value = kv_cache.update(self.layer_idx, key, value, positions)  # (B, nh, max_length, hs)
            attend_positions = (positions, kv_cache.key_positions)  # the mask hides the slots not written yet
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.attn_impl == "explicit" or return_weights:
            attended, weights = explicit_attention(query, key, value, causal, dropout_p, self.score,
                                                   attend_positions)  # context vectors
        else:
            attended = FUSED[self.attn_impl](query, key, value, causal, dropout_p, attend_positions)
        out = self.resid_dropout(self.W_O(self.merge_heads(attended)))  # (B, T, C)
        return out, weights
