"""Validation loss and bits per byte, overall and per group (en, zh, pairs, ...).

Bits per byte = total nats / (ln 2 x total UTF-8 bytes of the predicted tokens). Unlike loss per
token, it does not depend on the tokenizer, so runs with different vocabularies compare fairly,
and it says how well each language is modelled byte for byte.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data.batches import TokenBins, eval_starts, windows
from trainer.runtime import autocast, to_device


@torch.no_grad()
def evaluate(model: torch.nn.Module, bins: TokenBins, block_size: int, n_windows: int, batch_size: int,
             device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """{'val/loss', 'val/bpb', 'val/<group>/loss', 'val/<group>/bpb'} on fixed windows of val.bin."""
    was_training = model.training
    model.eval()
    tokens = bins.splits["val"]
    byte_lengths = torch.tensor(bins.tokenizer.token_byte_lengths(), dtype=torch.float64)
    totals = {"nats": 0.0, "bytes": 0.0, "loss": 0.0, "count": 0.0}
    metrics: dict[str, float] = {}
    for group, layout in bins.groups("val").items():
        sums = dict.fromkeys(totals, 0.0)
        starts = eval_starts(layout["start"], layout["end"], len(tokens), block_size, n_windows)
        for chunk in starts.split(batch_size):
            x, y = windows(tokens, chunk, block_size)  # (b, T) each
            with autocast(device, dtype):
                logits, _ = model(to_device(x, device))
            nll = F.cross_entropy(logits.float().flatten(0, 1), to_device(y, device).flatten(), reduction="none")
            nll = nll.view(y.shape).double().cpu()  # (b, T) nats per predicted token
            position = chunk[:, None] + 1 + torch.arange(block_size)  # where each target sits in val.bin
            inside = (position >= layout["start"]) & (position < layout["end"])  # score this group only
            n_bytes = byte_lengths[y] * inside
            sums["nats"] += (nll * (n_bytes > 0)).sum().item()  # <|endoftext|> has no bytes
            sums["bytes"] += n_bytes.sum().item()
            sums["loss"] += (nll * inside).sum().item()
            sums["count"] += inside.sum().item()
        metrics[f"val/{group}/loss"] = sums["loss"] / sums["count"]
        metrics[f"val/{group}/bpb"] = sums["nats"] / (math.log(2) * sums["bytes"])
        for key in totals:
            totals[key] += sums[key]
    metrics["val/loss"] = totals["loss"] / totals["count"]
    metrics["val/bpb"] = totals["nats"] / (math.log(2) * totals["bytes"])
    model.train(was_training)
    return metrics
