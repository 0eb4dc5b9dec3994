"""The attention report's numbers: per-head metrics beside chance (what uniform causal attention
scores on the same windows) per language group, head ablation, and their history over a run.
heads/README.md defines each metric. Every one averages over rows 1..T-1 of causal weights
(..., T, T): row 0 can only attend to itself, so it says nothing about a head."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from data.batches import TokenBins, eval_starts, evaluate, windows
from data.tokenizer import Tokenizer
from model import GPT

# the margins are a stated judgement: a fifth of the scale for the row metrics, a tenth for the
# rarer induction and cross-language weights (a head at chance + 0.1 attends there 10 % more often);
# the sign is the side of chance on which a head stands out
MARGINS = {"entropy": -0.2, "distance": -0.2, "prev_token": 0.2, "sink": 0.2, "induction": 0.1, "en→zh": 0.1,
           "zh→en": 0.1}
MIN_PAIR_QUERIES = 20  # fewer English or Chinese tokens in pair lines say nothing about a head
REPORT_SEED = 1  # evaluation's windows use seed 0; these are another fixed sample of the same text
Ablation = tuple[dict[str, float], dict[str, np.ndarray]]  # intact bpb per group, group -> increase per head


def each(nested: dict[str, dict], fn: Callable) -> dict[str, dict]:
    """metric -> group -> fn(value): the shape every number of the report is kept in."""
    return {metric: {group: fn(value) for group, value in groups.items()} for metric, groups in nested.items()}


def uniform_causal(T: int) -> torch.Tensor:
    """(T, T): every query spreads its weight evenly over itself and the keys before it."""
    visible = torch.ones(T, T, dtype=torch.float64).tril()
    return visible / visible.sum(-1, keepdim=True)


def normalised_entropy(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of H(row i) / log(i + 1)."""
    rows = weights[..., 1:, :].double()  # (..., T-1, T)
    entropy = -(rows * torch.log(rows.clamp_min(1e-30))).sum(-1)  # (..., T-1); 0 log 0 = 0
    max_entropy = torch.log(torch.arange(2, weights.size(-1) + 1, dtype=torch.float64, device=weights.device))
    return (entropy / max_entropy).mean(-1)


def relative_distance(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of sum_j w_ij (i - j) / i."""
    i = torch.arange(weights.size(-1), device=weights.device)
    back = (i[:, None] - i[None, :]).clamp_min(0).double() / i.clamp_min(1)[:, None]  # (T, T): 0 = itself, 1 = first
    return (weights.double() * back).sum(-1)[..., 1:].mean(-1)


def previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over i >= 1 of w[i, i-1]."""
    return weights.double().diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def sink_score(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over i >= 1 of w[i, 0]."""
    return weights.double()[..., 1:, 0].mean(-1)


def induction_score(weights: torch.Tensor) -> torch.Tensor:
    """weights (..., 2n, 2n) on a sequence [w, w] -> (...): mean over t < n-1 of w[n + t, t + 1]."""
    n = weights.size(-1) // 2
    t = torch.arange(n - 1, device=weights.device)
    return weights.double()[..., n + t, t + 1].mean(-1)


def induction_gain(on_repeat: torch.Tensor, on_text: torch.Tensor) -> torch.Tensor:
    """(..., 2n, 2n) weights on [w, w] and on the window itself (its second half not w) -> (...): what
    the repeat adds to induction_score. A head that attends by position alone (a model trained on runs
    repeated at one distance learns that) scores the same on both: 0, as uniform attention does."""
    return induction_score(on_repeat) - induction_score(on_text)


ROW_METRICS = {"entropy": normalised_entropy, "distance": relative_distance, "prev_token": previous_token_score,
               "sink": sink_score}


def weight_on_keys(weights: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """weights (L, B, H, T, T), queries (B, T), keys (B, T, T): key j counts for query i -> (L, H),
    the weight on the keys summed over the queries."""
    on_keys = (weights.double() * keys[None, :, None].double()).sum(-1)  # (L, B, H, T)
    return (on_keys * queries[None, :, None].double()).sum((1, 3))


def standout(values: np.ndarray, chance: float, metric: str) -> dict:
    """The head furthest past chance on the metric's notable side; named when it clears the margin."""
    margin = MARGINS[metric]
    excess = math.copysign(1.0, margin) * (values - chance)  # (n_layer, n_head)
    layer, head = divmod(int(np.nan_to_num(excess, nan=-np.inf).argmax()), values.shape[1])
    return {"layer": layer, "head": head, "value": float(values[layer, head]),
            "named": bool(excess[layer, head] >= abs(margin)), "chance": chance}


def report_windows(bins: TokenBins, block_size: int, n_windows: int) -> dict[str, torch.Tensor]:
    """group -> (n_windows, block_size) token ids from the validation split, fixed for the run."""
    tokens = bins.splits["val"]
    return {group: windows(tokens, eval_starts(layout["start"], layout["end"], len(tokens), block_size, n_windows,
                                               seed=REPORT_SEED), block_size)[0]
            for group, layout in bins.groups("val").items()}


@functools.cache
def token_classes(tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Per vocabulary id, bool (vocab,): en (ASCII letters), zh (non-ASCII: here Chinese), newline, equals."""
    pieces = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
    return {
        "en": torch.tensor([any(chr(b).isalpha() for b in p if b < 128) and max(p, default=0) < 128 for p in pieces]),
        "zh": torch.tensor([max(p, default=0) >= 128 for p in pieces]),
        "newline": torch.tensor([b"\n" in p for p in pieces]),
        "equals": torch.tensor([b"=" in p for p in pieces]),
    }


def pair_masks(ids: torch.Tensor, classes: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Queries (B, T) and keys (B, T, T) on `中文 = English` lines of ids (B, T): en→zh, English after
    a line's `=` reading its Chinese; zh→en, Chinese reading the English of earlier lines (causal
    attention cannot see the English after it)."""
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
    values: dict[str, dict[str, np.ndarray]]  # metric -> group -> (n_layer, n_head)
    chance: dict[str, dict[str, float]]  # metric -> group -> what uniform causal attention scores
    windows: dict[str, int]  # group -> windows scored

    def standouts(self) -> dict[str, dict[str, dict]]:
        return {metric: {group: standout(values, self.chance[metric][group], metric)
                         for group, values in groups.items()} for metric, groups in self.values.items()}


@torch.no_grad()
def head_evidence(model: GPT, group_ids: dict[str, torch.Tensor], tokenizer: Tokenizer, batch: int = 8) -> Evidence:
    """Every metric per head and group over the windows group_ids (group -> (B, T) ids), with chance."""
    device = next(model.parameters()).device
    classes = token_classes(tokenizer)
    values: dict[str, dict[str, np.ndarray]] = {}
    chance: dict[str, dict[str, float]] = {}
    for group, ids in group_ids.items():
        n, uniform = ids.size(1) // 2, uniform_causal(ids.size(1))
        # metric -> [(L, H) summed over the windows, chance, windows]; pairs: [(L, H) summed over the
        # pair queries, uniform attention's sum, queries]
        found = {metric: [0, float(fn(uniform)), len(ids)] for metric, fn in ROW_METRICS.items()}
        found["induction"] = [0, 0.0, len(ids)]  # uniform attention is the same on both texts
        pairs: dict[str, list] = {}
        for chunk in ids.split(batch):  # the maps stay on the model's device: only (L, H) sums come back
            maps = model.attention_maps(chunk.to(device))  # (L, b, H, T, T)
            for metric, fn in ROW_METRICS.items():
                found[metric][0] += fn(maps).sum(1).cpu()
            repeated = torch.cat([chunk[:, :n], chunk[:, :n]], 1)  # (b, 2n): the first half twice
            found["induction"][0] += induction_gain(model.attention_maps(repeated.to(device)), maps).sum(1).cpu()
            for metric, (queries, keys) in pair_masks(chunk, classes).items():
                sums = pairs.setdefault(metric, [0, 0.0, 0])
                sums[0] += weight_on_keys(maps, queries.to(device), keys.to(device)).cpu()
                sums[1] += float(weight_on_keys(uniform[None, None, None], queries, keys))
                sums[2] += int(queries.sum())
        found |= {metric: [weight, uniform / queries, queries] for metric, (weight, uniform, queries) in pairs.items()
                  if queries >= MIN_PAIR_QUERIES and uniform > 0}  # queries, and keys for them to read
        for metric, (total, at_chance, count) in found.items():
            values.setdefault(metric, {})[group] = (total / count).float().numpy()
            chance.setdefault(metric, {})[group] = at_chance
    return Evidence(values, chance, {group: len(ids) for group, ids in group_ids.items()})


@torch.no_grad()
def ablate_heads(model: GPT, bins: TokenBins, n_windows: int, batch_size: int, device: torch.device,
                 dtype: torch.dtype) -> Ablation:
    """Bits per byte per group ('all' too), and group -> (n_layer, n_head) its increase when that head's
    context vector is zeroed before W_O mixes the heads (zero-ablation, the rest unchanged)."""
    def bpb() -> dict[str, float]:  # the evaluation train.py prints, on fewer windows
        scores = evaluate(model, bins, model.config.block_size, n_windows, batch_size, device, dtype)
        return {"all" if key == "val/bpb" else key.split("/")[1]: value  # val/bpb, val/<group>/bpb
                for key, value in scores.items() if key.endswith("bpb")}

    intact = bpb()
    deltas = {group: np.zeros((model.config.n_layer, model.config.n_head)) for group in intact}
    for layer, block in enumerate(model.blocks):
        for head in range(model.config.n_head):
            block.attn.head_mask = torch.ones(model.config.n_head, device=device)
            block.attn.head_mask[head] = 0.0
            try:
                ablated = bpb()
            finally:
                block.attn.head_mask = None
            for group, value in ablated.items():
                deltas[group][layer, head] = value - intact[group]
    return intact, deltas


class ReportHistory:
    """Every report's metrics of a run, kept in the checkpoint so a resumed run's charts go on."""

    def __init__(self, state: dict | None = None) -> None:  # state: a checkpoint's report_history
        self.steps: list[int] = list(state["steps"]) if state else []
        self.values = [each(values, np.array) for values in (state["values"] if state else [])]

    def add(self, step: int, evidence: Evidence) -> None:
        self.steps.append(step)
        self.values.append(evidence.values)

    def state(self) -> dict:
        """Plain lists, for the checkpoint (torch.load(weights_only=True) reads them)."""
        return {"steps": list(self.steps), "values": [each(values, np.ndarray.tolist) for values in self.values]}

    def charts(self, evidence: Evidence) -> dict:
        """attn_chart/<metric>/<group> -> a wandb line chart over the steps so far, a line per head and a
        flat one at chance (the windows are fixed for the run, so chance is too), to read each head against."""
        import wandb

        charts = {}
        for metric, groups in evidence.values.items():
            for group, latest in groups.items():
                heads = list(np.ndindex(latest.shape))
                ys = [[float(v[metric][group][layer, head]) if group in v.get(metric, {}) else float("nan")
                       for v in self.values] for layer, head in heads]
                chance = evidence.chance[metric][group]
                charts[f"attn_chart/{metric}/{group}"] = wandb.plot.line_series(
                    xs=self.steps, ys=[*ys, [chance] * len(self.steps)],
                    keys=[*(f"L{layer}H{head}" for layer, head in heads), "chance"], xname="step",
                    title=f"{metric} ({group}) · chance {chance:.3f}")
        return charts
