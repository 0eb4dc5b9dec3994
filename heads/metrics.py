"""Per-head attention metrics, each on a fixed scale, with the value chance gives it.

All take attention weights (..., T, T) with causal rows and average over rows 1..T-1 (row 0 can
only attend to itself, so it says nothing about a head):
- entropy:    row entropy / log(row length): 1 = uniform over the visible past, 0 = one token.
- distance:   how far back a row looks, as a fraction of how far it could: sum_j w_ij (i - j) / i;
              0 = the token itself, 1 = the first token, whatever the window's length.
- prev_token: mean weight on position i-1: 1 for a pure previous-token head.
- sink:       mean weight on position 0 (the first token, often an "attention sink").
- induction:  on a window repeated twice [w, w], the mean weight from each second-half position to
              the token after that token's first occurrence: 1 for a perfect induction head
              (Olsson et al. 2022, "In-context learning and induction heads").
- en→zh, zh→en: on `中文 = English` pair lines, the weight English tokens put on their own line's
              Chinese half, and Chinese tokens on the English of earlier lines (causal attention
              cannot see the English after them): how bilingual a head is.

Chance is what uniform causal attention (each visible key weighted 1 / (i + 1)) scores on the same
windows. A head is *named* for a metric only when it beats chance by the metric's margin, in the
direction that makes it notable (lower entropy and distance, higher for the rest).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def uniform_causal(T: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T): every query spreads its weight evenly over itself and the keys before it."""
    visible = torch.ones(T, T, dtype=torch.float64, device=device).tril()
    return visible / visible.sum(-1, keepdim=True)


def normalised_entropy(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of H(row i) / log(i + 1)."""
    T = weights.size(-1)
    rows = weights[..., 1:, :].double()  # (..., T-1, T)
    entropy = -(rows * torch.log(rows.clamp_min(1e-30))).sum(-1)  # (..., T-1); 0 log 0 = 0
    max_entropy = torch.log(torch.arange(2, T + 1, dtype=torch.float64, device=weights.device))  # log(i+1)
    return (entropy / max_entropy).mean(-1)


def relative_distance(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of sum_j w_ij (i - j) / i."""
    T = weights.size(-1)
    i = torch.arange(T, device=weights.device)
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


def weight_on_keys(weights: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The weight the chosen queries put on their chosen keys, summed over those queries.

    weights (L, B, H, T, T); queries (B, T) bool; keys (B, T, T) bool (keys[b, i, j]: key j counts
    for query i). -> (L, H); divide by queries.sum() for the mean per query."""
    on_keys = (weights.double() * keys[None, :, None].double()).sum(-1)  # (L, B, H, T)
    return (on_keys * queries[None, :, None].double()).sum((1, 3))


def uniform_weight_on_keys(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """weight_on_keys for uniform causal attention: query i gives each of its i + 1 keys 1 / (i + 1)."""
    row_length = torch.arange(1, keys.size(-1) + 1, dtype=torch.float64)
    return float((keys.sum(-1) / row_length * queries).sum())


@dataclass(frozen=True)
class Metric:
    notable: str  # "high" or "low": the side of chance on which a head stands out
    margin: float  # how far past chance a head must be to be named for this metric
    meaning: str  # what a head named for it does


# the margins are a stated judgement: a fifth of the scale for the row metrics, a tenth for the
# rarer induction and cross-language weights (a head at chance + 0.1 attends there 10 % more often)
METRICS = {
    "entropy": Metric("low", 0.2, "focused: a few keys take most of the weight"),
    "distance": Metric("low", 0.2, "local: attends to the last few tokens"),
    "prev_token": Metric("high", 0.2, "previous-token head"),
    "sink": Metric("high", 0.2, "attention sink: parks weight on the first token"),
    "induction": Metric("high", 0.1, "induction head: copies what followed the last occurrence"),
    "en→zh": Metric("high", 0.1, "English tokens read their line's Chinese half"),
    "zh→en": Metric("high", 0.1, "Chinese tokens read earlier English"),
}
ROW_METRICS = {"entropy": normalised_entropy, "distance": relative_distance, "prev_token": previous_token_score,
               "sink": sink_score}


def standout(values: torch.Tensor, chance: float, metric: str) -> tuple[int, int, float, bool]:
    """The head furthest past chance in the metric's notable direction: (layer, head, value, named),
    named when it clears chance by the metric's margin."""
    spec = METRICS[metric]
    sign = 1.0 if spec.notable == "high" else -1.0
    excess = sign * (values - chance)
    layer, head = divmod(int(torch.nan_to_num(excess, nan=float("-inf")).argmax()), values.size(1))
    return layer, head, float(values[layer, head]), bool(excess[layer, head] >= spec.margin)
