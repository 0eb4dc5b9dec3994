"""The KV cache: keys and values of the tokens already seen, kept per layer during generation.

Without it, every new token recomputes attention for the whole prefix (O(T^2) per token); with
it, the new token's query attends to the stored keys and values and only one row is computed.

The buffers have a fixed size, max_length positions, allocated once and written in place at each
token's position. Every decoding step therefore sees tensors of the same shapes at the same
addresses, which is what lets torch.compile turn the step into one fixed program, and on a GPU
replay it as a CUDA graph (the buffers are marked as static addresses: a graph may write into
them). The positions not yet written lie after every query, so the causal mask hides them:
attention never reads them, and a cache can be reused for the next generation as it is.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (n_layer, batch, n_head, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (n_layer, B, nh, max_length, hs)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.key_positions = torch.arange(max_length, device=device)  # (max_length,): slot j holds position j
        for buffer in (self.keys, self.values, self.key_positions):
            torch._dynamo.mark_static_address(buffer)

    def fits(self, batch: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this cache can serve a generation of `batch` sequences in `dtype` on `device`."""
        return self.keys.size(1) == batch and self.keys.dtype == dtype and self.keys.device == device

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new key, value (B, nh, T, hs) of `layer` at `positions` (T,); return every
        slot's keys and values, (B, nh, max_length, hs), the unwritten ones included."""
        self.keys[layer].index_copy_(2, positions, key)
        self.values[layer].index_copy_(2, positions, value)
        return self.keys[layer], self.values[layer]
