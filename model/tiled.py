"""Tiled attention (model.attn_impl=tiled): the flash algorithm (Dao et al. 2022) in plain PyTorch, step by step.

explicit_attention (model/attention.py) scores every query against every key at once: the scores and the weights
are B x n_head x T_q x T_k numbers, kept for the backward pass, so its memory grows as T^2. Here the queries and the
keys go in tiles of `tile` positions. A query tile meets the key tiles one after the other and keeps, for each query,
three running values: the row maximum m of the scores so far, the sum l of exp(score - m) and the context c, the sum
of exp(score - m) x value. Only one tile x tile block of scores exists at a time; the T x T weights never do.

Why it is exact: softmax(s)_j = exp(s_j - m) / sum_i exp(s_i - m) for any constant m (the row maximum keeps exp from
overflowing). When a key tile raises a row's maximum from m to m', multiplying l and c by exp(m - m') turns each
earlier term exp(s_j - m) into exp(s_j - m'); so after the last key tile, l and c are the sums over all keys with the
row's true maximum, and c / l is softmax(scores) @ value: the same numbers, added in another order (a few ulps apart).
Dropout drops each exp(s_j - m) as explicit drops each weight, an independent keep-or-zero with the kept ones scaled by
1/(1-p); the later rescaling and the division by l multiply a whole row alike, so each weight is dropped with the same
probability and scaled the same way as on the explicit path (the same distribution; not the same random draws).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.attention import Positions, dot_product_scores, future_mask, last_positions


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
