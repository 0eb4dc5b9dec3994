"""The KV cache: keys and values of the tokens already seen, kept per layer during generation.

Without it, every new token recomputes attention for the whole prefix (O(T^2) per token); with
it, the new token's query attends to the stored keys and values and only one row is computed.

The buffers have a fixed size, max_length positions, allocated once and written in place at each
token's position. Every decoding step therefore sees tensors of the same shapes, which is what
lets torch.compile turn the step into one fixed program. The positions not yet
written lie after every query, so the causal mask hides them: attention never reads them.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, max_length: int):
        self.max_length = max_length
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.key_positions: torch.Tensor | None = None  # (max_length,): slot j holds position j

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new key, value (B, nh, T, hs) of `layer` at `positions` (T,); return every
        slot's keys and values, (B, nh, max_length, hs), the unwritten ones included."""
        B, nh, T, hs = key.shape
        if self.keys[layer] is None:  # allocated on first use, in the dtype autocast produced
            self.keys[layer] = key.new_zeros(B, nh, self.max_length, hs)
            self.values[layer] = value.new_zeros(B, nh, self.max_length, hs)
        if self.key_positions is None:  # shared by every layer
            self.key_positions = torch.arange(self.max_length, device=key.device)
        self.keys[layer].index_copy_(2, positions, key)
        self.values[layer].index_copy_(2, positions, value)
        return self.keys[layer], self.values[layer]
