"""Batches of (input, target) windows from the token bins.

Training draws windows at random positions of train.bin from a seeded generator. Evaluation uses
a fixed set of windows per group of val.bin, so every evaluation of a run scores the same text
and the numbers are comparable across steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.device import autocast, to_device
from data.sources import DataError
from data.tokenizer import Tokenizer


def bin_problem(folder: Path, meta: dict) -> str | None:
    """What is wrong with the bins meta.json describes (a file missing, or not the size its token
    count says), or None when every one is whole."""
    for layout in meta["splits"].values():
        path = folder / layout["file"]
        expected = layout["tokens"] * np.dtype(meta["dtype"]).itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            return f"{path} is {'missing' if actual is None else f'{actual} bytes, expected {expected}'}"
    return None


class TokenBins:
    """The prepared folder: memmapped train/val streams, their layout and the tokenizer."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path} is missing: prepare the data first (python -m data.prepare)")
        self.meta = json.loads(meta_path.read_text())
        self.tokenizer = Tokenizer.load(self.folder / "tokenizer.json")
        if self.tokenizer.hash != self.meta["tokenizer_hash"]:
            raise DataError(
                f"{self.folder}/tokenizer.json (hash {self.tokenizer.hash}) is not the tokenizer the bins were "
                f"made with ({self.meta['tokenizer_hash']}): delete {meta_path} and prepare again"
            )
        damaged = bin_problem(self.folder, self.meta)
        if damaged:
            raise DataError(f"{damaged} (truncated or replaced): delete {meta_path} and prepare again")
        self.splits: dict[str, np.memmap] = {
            split: np.memmap(self.folder / layout["file"], dtype=self.meta["dtype"], mode="r")
            for split, layout in self.meta["splits"].items()}

    def groups(self, split: str) -> dict[str, dict]:
        return self.meta["splits"][split]["groups"]

    def check_block_size(self, block_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size:
                raise DataError(
                    f"model.block_size={block_size} is not smaller than the {split} split ({len(tokens)} tokens): "
                    "use a smaller block_size or more text"
                )


def windows(tokens: np.ndarray, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+1+T] for every start s -> two (B, T) int64."""
    rows = np.stack([tokens[s : s + block_size + 1] for s in starts.tolist()]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class TrainSampler:
    """Random training windows from a seeded generator.

    Every rank draws the same global batch and keeps its own slice of it, so the union over
    ranks is exactly the batch a single process would train on.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.tokens, self.block_size, self.global_batch = tokens, block_size, global_batch
        # global_batch is a multiple of world_size (train.py's check_config says so otherwise)
        self.rank_slice = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), each (global_batch / world_size, block_size)."""
        high = len(self.tokens) - self.block_size - 1
        starts = torch.randint(0, high + 1, (self.global_batch,), generator=self.generator)
        return windows(self.tokens, starts[self.rank_slice], self.block_size)


def eval_starts(start: int, end: int, n_tokens: int, block_size: int, n_windows: int, seed: int = 0) -> torch.Tensor:
    """Fixed, seeded window starts covering the group [start, end) of a stream of n_tokens.

    A group shorter than one window gets windows that begin before it; the evaluator scores only
    the targets that fall inside the group, so every group is measured on its own text.
    """
    first = max(0, min(start, n_tokens - block_size - 1))
    last = max(first, min(end, n_tokens) - block_size - 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(first, last + 1, (n_windows,), generator=generator).sort().values


# ---------------------------------------------------------------------------------------------
# validation: validation loss and bits per byte, overall and per group (en, zh, pairs, ...)
#
# Bits per byte = total nats / (ln 2 x total UTF-8 bytes of the predicted tokens). Unlike loss per
# token, it does not depend on the tokenizer, so runs with different vocabularies compare fairly,
# and it says how well each language is modelled byte for byte.


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
