"""Per-head evidence over many validation windows, for each language group, beside chance.

The probes picture one short text each; the numbers come from here instead: a fixed, seeded set of
`windows` full-context windows per group of the validation split (en, zh, pairs, or your own),
the same at every report of a run, so a metric's curve shows the model changing, not the text.
Induction is scored on each window's first half repeated ([w, w]), so it too is per language;
the cross-language scores only where a group holds `中文 = English` lines.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from data.batches import TokenBins, eval_starts, windows
from data.tokenizer import Tokenizer
from heads.metrics import (
    ROW_METRICS,
    induction_score,
    standout,
    uniform_causal,
    uniform_weight_on_keys,
    weight_on_keys,
)
from model import GPT

MIN_PAIR_QUERIES = 20  # fewer English or Chinese tokens in pair lines say nothing about a head
REPORT_SEED = 1  # evaluation's windows use seed 0; these are another fixed sample of the same text


def report_windows(bins: TokenBins, block_size: int, n_windows: int) -> dict[str, torch.Tensor]:
    """group -> (n_windows, block_size) token ids from the validation split, fixed for the run."""
    tokens = bins.splits["val"]
    return {group: windows(tokens, eval_starts(layout["start"], layout["end"], len(tokens), block_size, n_windows,
                                               seed=REPORT_SEED), block_size)[0]
            for group, layout in bins.groups("val").items()}


@functools.cache
def token_classes(tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Per vocabulary id (bool, (vocab,)): `en` (ASCII letters only), `zh` (non-ASCII bytes: in this
    corpus Chinese characters and full-width punctuation), `newline` and `equals` (the pair separator)."""
    pieces = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
    return {
        "en": torch.tensor([any(chr(b).isalpha() for b in p if b < 128) and max(p, default=0) < 128 for p in pieces]),
        "zh": torch.tensor([max(p, default=0) >= 128 for p in pieces]),
        "newline": torch.tensor([b"\n" in p for p in pieces]),
        "equals": torch.tensor([b"=" in p for p in pieces]),
    }


def pair_masks(ids: torch.Tensor, classes: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For `中文 = English` lines in windows ids (B, T): the queries (B, T) and keys (B, T, T) of
    en→zh (English tokens after a line's `=`, to the Chinese before it on the same line) and
    zh→en (Chinese tokens before a line's `=`, to English after the `=` of earlier lines)."""
    newline, equals = classes["newline"][ids], classes["equals"][ids]  # (B, T)
    line = torch.cumsum(newline.long(), 1) - newline.long()  # a newline token ends its line
    # after the separator on its line: the count of `=` seen on this line so far, before this token
    seen_before = torch.cumsum(equals.long(), 1) - equals.long()  # `=` tokens before each token
    starts_line = torch.ones_like(newline)
    starts_line[:, 1:] = line[:, 1:] != line[:, :-1]
    # the count when the token's line began: seen_before never decreases, so a running max carries it
    line_start = torch.cummax(torch.where(starts_line, seen_before, 0), 1).values
    english_half = (seen_before - line_start) > 0
    en = classes["en"][ids] & english_half
    zh = classes["zh"][ids] & ~english_half & ~equals
    earlier = torch.ones(ids.size(1), ids.size(1), dtype=torch.bool).tril(-1)  # key j before query i
    same_line = line[:, :, None] == line[:, None, :]
    return {
        "en→zh": (en, earlier & same_line & zh[:, None, :]),
        "zh→en": (zh, earlier & (line[:, None, :] < line[:, :, None]) & en[:, None, :]),
    }


@dataclass
class Evidence:
    values: dict[str, dict[str, torch.Tensor]]  # metric -> group -> (n_layer, n_head)
    chance: dict[str, dict[str, float]]  # metric -> group -> what uniform causal attention scores
    windows: dict[str, int]  # group -> windows scored

    def standouts(self) -> dict[str, dict[str, dict]]:
        """metric -> group -> the head furthest past chance: layer, head, value, chance, named."""
        return {metric: {group: dict(zip(("layer", "head", "value", "named"), standout(values, self.chance[metric][group], metric)),
                                     chance=self.chance[metric][group])
                         for group, values in groups.items()}
                for metric, groups in self.values.items()}


@torch.no_grad()
def head_evidence(model: GPT, group_ids: dict[str, torch.Tensor], tokenizer: Tokenizer, batch: int = 8) -> Evidence:
    """Every metric per head and group over the windows group_ids (group -> (B, T) ids), with chance."""
    device = next(model.parameters()).device
    classes = token_classes(tokenizer)
    values: dict[str, dict[str, torch.Tensor]] = {}
    chance: dict[str, dict[str, float]] = {}

    def add(metric: str, group: str, total: torch.Tensor) -> None:
        values.setdefault(metric, {})[group] = values.get(metric, {}).get(group, 0) + total

    for group, ids in group_ids.items():
        T = ids.size(1)
        n = T // 2
        pair_sums: dict[str, list] = {}  # metric -> [weight on keys (L, H), chance's, queries]
        for chunk in ids.split(batch):  # the maps stay on the model's device: only (L, H) sums come back
            maps = model.attention_maps(chunk.to(device))  # (L, b, H, T, T)
            for metric, fn in ROW_METRICS.items():
                add(metric, group, fn(maps).sum(1).cpu())  # (L, H), summed over windows
            repeated = torch.cat([chunk[:, :n], chunk[:, :n]], 1)  # (b, 2n): the first half twice
            add("induction", group, induction_score(model.attention_maps(repeated.to(device))).sum(1).cpu())
            for metric, (queries, keys) in pair_masks(chunk, classes).items():
                sums = pair_sums.setdefault(metric, [0.0, 0.0, 0])
                sums[0] = sums[0] + weight_on_keys(maps, queries.to(device), keys.to(device)).cpu()
                sums[1] += uniform_weight_on_keys(queries, keys)
                sums[2] += int(queries.sum())
        for metric in [*ROW_METRICS, "induction"]:
            values[metric][group] = values[metric][group] / len(ids)
        uniform = uniform_causal(T)
        for metric, fn in ROW_METRICS.items():
            chance.setdefault(metric, {})[group] = float(fn(uniform))
        chance.setdefault("induction", {})[group] = float(induction_score(uniform_causal(2 * n)))
        for metric, (weight, uniform_weight, n_queries) in pair_sums.items():
            if n_queries >= MIN_PAIR_QUERIES and uniform_weight > 0:  # queries, and keys for them to read
                values.setdefault(metric, {})[group] = weight / n_queries
                chance.setdefault(metric, {})[group] = uniform_weight / n_queries
    return Evidence({m: {g: v.float() for g, v in groups.items()} for m, groups in values.items()}, chance,
                    {group: len(ids) for group, ids in group_ids.items()})
