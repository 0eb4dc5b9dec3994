"""Batches of (input, target) windows from the token bins: random ones of train.bin for training, and for
evaluation a fixed set per group of val.bin, so every evaluation of a run scores the same text."""
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
            raise DataError(f"{self.folder}/tokenizer.json (hash {self.tokenizer.hash}) is not the tokenizer the bins "
                            f"were made with ({self.meta['tokenizer_hash']}): delete {meta_path} and prepare again")
        for layout in self.meta["splits"].values():
            path = self.folder / layout["file"]
            expected = layout["tokens"] * np.dtype(self.meta["dtype"]).itemsize
            actual = path.stat().st_size if path.is_file() else None
            if actual != expected:
                damage = "missing" if actual is None else f"{actual} bytes, expected {expected}"
                raise DataError(f"{path} is {damage} (truncated or replaced): delete {meta_path} and prepare again")
        self.splits: dict[str, np.memmap] = {
            split: np.memmap(self.folder / layout["file"], dtype=self.meta["dtype"], mode="r")
            for split, layout in self.meta["splits"].items()}

    def groups(self, split: str) -> dict[str, dict]:
        return self.meta["splits"][split]["groups"]

    def check_block_size(self, block_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size:
                raise DataError(f"model.block_size={block_size} is not smaller than the {split} split ({len(tokens)} "
                                "tokens): use a smaller block_size or more text")


def windows(tokens: np.ndarray, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+1+T] for every start s -> two (B, T) int64."""
    rows = torch.from_numpy(np.stack([tokens[s : s + block_size + 1] for s in starts.tolist()]).astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class TrainSampler:
    """Random training windows from a seeded generator: every rank draws the same global batch and keeps its
    slice, so together the ranks train on exactly the batch a single process would."""

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
    """Fixed, seeded window starts covering the group [start, end) of a stream of n_tokens; a group shorter
    than a window gets windows that begin before it (evaluate scores only the targets inside the group)."""
    first = max(0, min(start, n_tokens - block_size - 1))
    last = max(first, min(end, n_tokens) - block_size - 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(first, last + 1, (n_windows,), generator=generator).sort().values


@torch.no_grad()
def evaluate(model: torch.nn.Module, bins: TokenBins, block_size: int, n_windows: int, batch_size: int,
             device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """{'val/loss', 'val/bpb', 'val/<group>/loss', 'val/<group>/bpb'} on fixed windows of val.bin. Bits per
    byte, nats / (ln 2 x UTF-8 bytes of the predicted tokens), compare runs of any tokenizer and languages."""
    was_training = model.training
    model.eval()
    tokens = bins.splits["val"]
    byte_lengths = torch.tensor(bins.tokenizer.token_byte_lengths(), dtype=torch.float64)
    metrics: dict[str, float] = {}
    totals = torch.zeros(4, dtype=torch.float64)  # nats of the tokens with bytes, their bytes, all nats, targets

    def add_metrics(prefix: str, sums: torch.Tensor) -> None:
        nats, n_bytes, loss, count = sums.tolist()
        metrics[f"{prefix}/loss"] = loss / count
        metrics[f"{prefix}/bpb"] = nats / (math.log(2) * n_bytes)

    for group, layout in bins.groups("val").items():
        sums = torch.zeros(4, dtype=torch.float64)
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
            # <|endoftext|> has no bytes: the bpb leaves it out
            sums += torch.stack([(nll * (n_bytes > 0)).sum(), n_bytes.sum(), (nll * inside).sum(), inside.sum()])
        add_metrics(f"val/{group}", sums)
        totals += sums
    add_metrics("val", totals)
    model.train(was_training)
    return metrics
