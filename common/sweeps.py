"""Hydra sweeps (`python train.py -m a=1,2 ...`): every job gets its own out_dir and wandb name from the
swept keys, and a job that stops the sweep says which points did not run."""
from __future__ import annotations

import sys
from pathlib import Path

from hydra._internal.utils import get_args
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig


def command_overrides() -> list:
    return OverridesParser.create().parse_overrides(get_args(sys.argv[1:]).overrides)  # as hydra read them


def swept_keys() -> set[str] | None:
    """The keys a `-m` sweep varies; None outside a sweep (or outside hydra)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return {o.key_or_group for o in command_overrides() if o.is_sweep_override()}


def point_name(overrides: list[str], swept: set[str]) -> str:
    """A point of the sweep as `a=2,b=x`: its swept keys only."""
    return ",".join(item for item in overrides if item.split("=", 1)[0].lstrip("+") in swept)


def sweep_left() -> str:
    """For a job that stops a `-m` sweep: `; the sweep stopped at point 2 of 4 (a=2): a=3, a=4 did not
    run`; '' outside a sweep."""
    swept = swept_keys()
    if swept is None:
        return ""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # what orders hydra's own sweep

    points = [point_name(job, swept) for batch in BasicSweeper.split_arguments(command_overrides(), None)
              for job in batch]
    num = HydraConfig.get().job.num
    left = points[num + 1:]
    return (f"; the sweep stopped at point {num + 1} of {len(points)} ({points[num]})"
            + (f": {', '.join(left)} did not run" if left else ""))


def separate_sweep_jobs(raw: DictConfig) -> None:
    """Every job of a sweep trains in its own out_dir/<point> under its own wandb name (sharing one folder,
    the second job would resume the first's finished run), unless out_dir itself is swept."""
    swept = swept_keys()
    if swept is None or "out_dir" in swept:
        return
    hydra_config = HydraConfig.get()
    point = point_name(hydra_config.overrides.task, swept).replace("/", "_") or f"job{hydra_config.job.num}"
    raw.out_dir = str(Path(str(raw.out_dir)) / point)
    raw.wandb.name = f"{raw.wandb.name}-{point}" if raw.wandb.name else point
