"""AdamW for everything (nanoGPT), or Muon (trainer/muon.py) for the blocks' weight matrices with
AdamW for the rest (modded-nanogpt, nanochat). Muon's updates have AdamW's size, so one learning
rate and one schedule serve both."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from model import GPT
from trainer.muon import Muon, newton_schulz_dtype

if TYPE_CHECKING:  # trainer.config reads OPTIMIZERS from here
    from trainer.config import TrainConfig

OPTIMIZERS = ("adamw", "muon")


def adamw(params: list[torch.nn.Parameter], tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices only, not on biases and gains; the fused kernel on CUDA and CPU."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2),
                             fused=device.type in ("cuda", "cpu"))


def make_optimizers(model: GPT, tc: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        return [adamw(params, tc, device)]
    # the blocks' Linear weights: not every 2-D parameter is a matrix to orthogonalise (additive
    # attention's v holds one vector per head)
    hidden = [m.weight for m in model.blocks.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    muon = Muon(hidden, lr=tc.learning_rate, weight_decay=tc.weight_decay, ns_dtype=newton_schulz_dtype(device))
    return [muon, adamw([p for p in params if all(p is not h for h in hidden)], tc, device)]
