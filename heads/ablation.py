"""Head ablation: what each head is for, per language.

Each head in turn is silenced — its context vector zeroed before W_O mixes the heads, so the rest
of the model runs unchanged (zero-ablation, not mean-ablation) — and the validation bits per byte
of every group are measured again on fixed windows. The increase over the intact model says how
much English, Chinese or the pairs need that head; the difference between groups says which
language it serves.
"""
from __future__ import annotations

import numpy as np
import torch

from data.batches import TokenBins, evaluate  # the evaluation train.py prints, on fewer windows
from model import GPT


@torch.no_grad()
def ablate_heads(model: GPT, bins: TokenBins, n_windows: int, batch_size: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The intact model's bits per byte per group ('all' too), and group -> (n_layer, n_head) the
    increase in bits per byte when that one head is zero-ablated."""
    def bpb() -> dict[str, float]:
        scores = evaluate(model, bins, model.config.block_size, n_windows, batch_size, device, dtype)
        return {"all" if key == "val/bpb" else key.split("/")[1]: value  # val/bpb, val/<group>/bpb
                for key, value in scores.items() if key.endswith("bpb")}

    intact = bpb()
    shape = (model.config.n_layer, model.config.n_head)
    deltas = {group: np.zeros(shape) for group in intact}
    for layer, block in enumerate(model.blocks):
        for head in range(model.config.n_head):
            mask = torch.ones(model.config.n_head, device=device)
            mask[head] = 0.0
            block.attn.head_mask = mask
            try:
                ablated = bpb()
            finally:
                block.attn.head_mask = None
            for group, value in ablated.items():
                deltas[group][layer, head] = value - intact[group]
    return intact, deltas
