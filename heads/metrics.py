"""Per-head attention metrics, each a number in a known range with a known meaning.

All take attention weights (..., T, T) with causal rows and average over rows 1..T-1 (row 0 can
only attend to itself, so it says nothing about a head):
- entropy:    row entropy / log(row length): 1 = uniform over the visible past, 0 = one token.
- distance:   mean |i - j| weighted by attention, in tokens: how far back the head looks.
- prev_token: mean weight on position i-1: 1 for a pure previous-token head.
- sink:       mean weight on position 0 (the first token, often an "attention sink").
- induction:  on random tokens repeated twice, the mean weight from each second-half position to
              the token after that token's first occurrence: 1 for a perfect induction head
              (Olsson et al. 2022, "In-context learning and induction heads").
"""
from __future__ import annotations

import torch

METRICS = ("entropy", "distance", "prev_token", "sink", "induction")


def normalised_entropy(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of H(row i) / log(i + 1)."""
    T = weights.size(-1)
    rows = weights[..., 1:, :].double()  # (..., T-1, T)
    entropy = -(rows * torch.log(rows.clamp_min(1e-30))).sum(-1)  # (..., T-1); 0 log 0 = 0
    max_entropy = torch.log(torch.arange(2, T + 1, dtype=torch.float64, device=weights.device))  # log(i+1)
    return (entropy / max_entropy).mean(-1)


def mean_distance(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over rows i >= 1 of sum_j w_ij (i - j), in tokens."""
    T = weights.size(-1)
    i = torch.arange(T, device=weights.device)
    distance = (i[:, None] - i[None, :]).clamp_min(0).double()  # (T, T): how far back key j is from query i
    return (weights.double() * distance).sum(-1)[..., 1:].mean(-1)


def previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over i >= 1 of w[i, i-1]."""
    return weights.double().diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def sink_score(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): mean over i >= 1 of w[i, 0]."""
    return weights.double()[..., 1:, 0].mean(-1)


def induction_score(weights: torch.Tensor) -> torch.Tensor:
    """weights (..., 2n, 2n) on a sequence [r, r] -> (...): mean over t < n-1 of w[n + t, t + 1]."""
    n = weights.size(-1) // 2
    t = torch.arange(n - 1, device=weights.device)
    return weights.double()[..., n + t, t + 1].mean(-1)


def induction_tokens(vocab_size: int, length: int, batch: int, seed: int, exclude: int) -> torch.Tensor:
    """`batch` sequences of `length` distinct random ids (never `exclude`), each repeated twice -> (batch, 2 * length)."""
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.tensor([i for i in range(vocab_size) if i != exclude])
    first = torch.stack([candidates[torch.randperm(len(candidates), generator=generator)[:length]] for _ in range(batch)])
    return torch.cat([first, first], dim=1)


ROW_METRICS = {"entropy": normalised_entropy, "distance": mean_distance, "prev_token": previous_token_score,
               "sink": sink_score}


def head_metrics(probe_maps: list[torch.Tensor], induction_maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric per head, each (n_layer, n_head).

    probe_maps: attention maps (L, B, H, T, T) of each probe, T >= 2 (T may differ between
    probes); the row metrics are averaged over probes. induction_maps: (L, B, H, 2n, 2n) on repeated random tokens.
    """
    metrics = {}
    for name, fn in ROW_METRICS.items():
        metrics[name] = torch.stack([fn(maps).mean(1) for maps in probe_maps]).mean(0).float()  # (L, H)
    metrics["induction"] = induction_score(induction_maps).mean(1).float()
    return metrics
