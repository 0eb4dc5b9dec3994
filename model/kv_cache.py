"""The KV cache: keys and values of the tokens already seen, kept per layer during generation.

Without it, every new token recomputes attention for the whole prefix (O(T^2) per token); with
it, the new token's query attends to the stored keys and values and only one row is computed.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, max_length: int):
        self.max_length = max_length
        self.length = 0  # tokens stored so far; the next token sits at this position
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new key, value (B, nh, T, hs) of `layer`; return all keys and values so far."""
        B, nh, T, hs = key.shape
        end = self.length + T
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} requested")
        if self.keys[layer] is None:  # allocated on first use, in the dtype autocast produced
            self.keys[layer] = key.new_zeros(B, nh, self.max_length, hs)
            self.values[layer] = value.new_zeros(B, nh, self.max_length, hs)
        self.keys[layer][:, :, self.length:end] = key
        self.values[layer][:, :, self.length:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, nh, T_past + T, hs)

    def advance(self, n_tokens: int) -> None:
        """Called once all layers have stored the new tokens."""
        self.length += n_tokens
