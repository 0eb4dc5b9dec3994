"""Additive attention scores (Bahdanau et al. 2015), per head: score(q_i, k_j) = v . tanh(W_q q_i + W_k k_j), the
alternative to scaled dot products (model.attn_score=additive). Every (query, key) pair gets its own attn_dim-wide
vector, so the scores are computed a chunk of queries at a time, with a hand-written backward pass."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn


def additive_chunk_bytes(device: torch.device) -> int:
    """How many bytes of (query, key) pair vectors one chunk of additive scores may hold on `device`.
    On a CPU, chunks that fit in its cache run fastest; a GPU has no such cache, and one query row of the
    GPU default is 24 MiB of pairs, so there chunks are as large as memory comfortably allows (few iterations)."""
    return 8 * 2**20 if device.type == "cpu" else 512 * 2**20


def additive_scores(query: torch.Tensor, key: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, v: torch.Tensor,
                    causal: bool = True, chunk_bytes: int | None = None) -> torch.Tensor:
    """query: (B, nh, T_q, hs); key: (B, nh, T_k, hs); W_q, W_k: (nh, hs, attn_dim); v: (nh, attn_dim) ->
    scores (B, nh, T_q, T_k); with causal, the pairs the mask hides are not computed (-inf).
    chunk_bytes: the pair vectors held at a time (None: additive_chunk_bytes of the device)."""
    chunk_bytes = chunk_bytes or additive_chunk_bytes(query.device)
    # 1. project the queries and the keys into the attention space, once
    query_proj = query @ W_q  # (B, nh, T_q, attn_dim)
    key_proj = key @ W_k  # (B, nh, T_k, attn_dim)
    # 2. scores: v . tanh(W_q q_i + W_k k_j) of every (query, key) pair, a chunk of queries at a time
    scores = AdditivePairScores.apply(query_proj, key_proj, v, causal, chunk_bytes)  # (B, nh, T_q, T_k)
    return scores


def chunk_rows(query_proj: torch.Tensor, T_k: int, chunk_bytes: int) -> int:
    """How many queries of query_proj (B, nh, T_q, attn_dim) one chunk of pair vectors with T_k keys
    holds in chunk_bytes (at least one)."""
    B, nh, T_q, attn_dim = query_proj.shape
    return min(T_q, max(1, chunk_bytes // (B * nh * T_k * attn_dim * query_proj.element_size())))


class AdditivePairScores(torch.autograd.Function):
    """scores[b, h, i, j] = v[h] . tanh(query_proj[b, h, i] + key_proj[b, h, j]), a chunk of queries at a time.

    All at once, the pair vectors x = query_proj_i + key_proj_j would be B x nh x T_q x T_k x attn_dim numbers (256 MiB
    per layer for the CPU preset in fp32), so one reused buffer of at most chunk_bytes holds a chunk's pairs (a fresh
    tensor would be page-faulted in every time). With causal, a chunk pairs its queries only with the keys up to its
    last query. The backward is written out, recomputing each chunk: autograd would keep every chunk's tanh.

    tanh(x) = 2 sigmoid(2x) - 1, and PyTorch's CPU sigmoid is several times faster than its tanh in float32: with
    a = sigmoid(2x), v . tanh(x) = 2 v . a - sum(v), whose derivative in x is 4 v a (1 - a). The pairs are in the
    promoted dtype of the inputs and v: float32 under bf16/fp16 autocast.
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
        for start in range(0, T_q, rows):
            chunk = slice(start, min(start + rows, T_q))
            # with causal, the keys up to the chunk's last query (the queries are the last T_q of the T_k positions)
            n_keys = chunk.stop + T_k - T_q if causal else T_k
            shape = (B, nh, chunk.stop - start, n_keys, attn_dim)
            pairs = torch.add(query_2x[:, :, chunk, None, :], key_2x[:, :, None, :n_keys, :],
                              out=buffer[:math.prod(shape)].view(shape))  # 2 (W_q q_i + W_k k_j)
            yield chunk, n_keys, pairs.sigmoid_()


class AdditiveScore(nn.Module):
    """The learned parameters of additive scores, per head: W_q, W_k (head_dim -> attn_dim) and v (attn_dim).
    W_q and W_k start with variance 1/head_dim, so W_q q has the scale of q: with GPT's 0.02 the pair vectors would
    sit in tanh's linear range, where v . tanh(W_q q_i + W_k k_j) splits into a query part that the softmax cancels
    plus a key part (attention blind to the query). v starts at 0.02, like the other weights, so the first
    attention is near uniform, as with dot products."""

    def __init__(self, n_head: int, head_dim: int, attn_dim: int):
        super().__init__()
        self.W_q = nn.Parameter(torch.randn(n_head, head_dim, attn_dim) / math.sqrt(head_dim))
        self.W_k = nn.Parameter(torch.randn(n_head, head_dim, attn_dim) / math.sqrt(head_dim))
        self.v = nn.Parameter(0.02 * torch.randn(n_head, attn_dim))
        self.chunk_bytes: int | None = None  # None: by device (additive_chunk_bytes)

    def forward(self, query: torch.Tensor, key: torch.Tensor, causal: bool = True) -> torch.Tensor:
        return additive_scores(query, key, self.W_q, self.W_k, self.v, causal, self.chunk_bytes)
