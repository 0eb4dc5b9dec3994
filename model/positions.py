"""Where a token is: the three positional encodings.

- learned:    a trained vector per position, added to the token embedding (GPT-2, nanoGPT).
- sinusoidal: fixed sines and cosines of geometrically spaced frequencies, added to the token
              embedding (Vaswani et al. 2017, the seed articles' "positional encoding").
- rope:       rotary embedding: query and key vectors are rotated by an angle proportional to their
              position, so query . key depends only on the distance between them (Su et al. 2021).
"""
from __future__ import annotations

import torch


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / base^(2i/dim)), PE[pos, 2i+1] = cos(pos / base^(2i/dim)) -> (n_positions, dim)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    frequency = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angle = position * frequency  # (P, ceil(dim/2))
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


def rotary_angles(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, each (n_positions, head_dim / 2); head_dim is even
    (GPTConfig checks it)."""
    frequency = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)
    angle = torch.arange(n_positions, dtype=torch.float64)[:, None] * frequency  # (P, hs/2)
    return angle.cos().float(), angle.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of x (B, nh, T, hs) by its position's angle; cos, sin: (T, hs/2)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)
