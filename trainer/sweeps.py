"""Hydra sweeps (`python train.py -m a=1,2 ...`): every job of a sweep gets its own out_dir and
wandb name, from the swept keys."""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig


def sweep_point() -> str | None:
    """Under `python train.py -m a=1,2 ...`, this job's point of the sweep as `a=2` (the swept keys
    only, as the job got them); None in a single run, or when out_dir itself is swept."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(
        [arg for arg in sys.argv[1:] if not arg.startswith("-")]) if o.is_sweep_override()}
    if "out_dir" in swept:
        return None
    point = [item for item in HydraConfig.get().overrides.task if item.split("=", 1)[0].lstrip("+") in swept]
    return ",".join(point).replace("/", "_") or f"job{HydraConfig.get().job.num}"


def separate_sweep_jobs(raw: DictConfig) -> None:
    """Every job of a sweep trains in its own out_dir/<point> under its own wandb name: sharing
    one folder, the second job would resume the first's finished run (or fail on a new shape)."""
    point = sweep_point()
    if point is not None:
        raw.out_dir = str(Path(str(raw.out_dir)) / point)
        raw.wandb.name = f"{raw.wandb.name}-{point}" if raw.wandb.name else point
