"""The attention report's settings, defined once for wandb.* of train.py (trainer/config.py:
WandbConfig) and for python -m heads.report (HeadsConfig, config/heads.yaml)."""
from __future__ import annotations

import dataclasses

from common.settings import device_setting, not_a_file, not_blank, setting, store_defaults
from data.checkpoint import CHECKPOINTS
from data.gpt2 import pretrained_rule


@dataclasses.dataclass
class ReportSettings:
    probes: list[str] | None = setting(None, check=lambda texts: None if all(len(text) >= 2 for text in texts) else
                                       "texts of 2 characters or more (a probe needs 2 tokens to show attention)",
                                       fix='["text one", "text two"], or null for the default probes')
    probe_tokens: int = setting(32, minimum=2, fix="a probe needs 2 tokens to have attention to show, e.g. 32")
    table_rows: int = setting(2000, minimum=1, fix="the most rows of the attention table, e.g. 2000")
    windows: int = setting(16, minimum=1, fix="validation windows per group that the head metrics average, e.g. 16")
    ablation_windows: int = setting(8, minimum=0, fix="validation windows per group for head ablation, or 0 for none")


@dataclasses.dataclass
class HeadsConfig(ReportSettings):
    """python -m heads.report's config (config/heads.yaml): the checkpoint, and the report (ReportSettings)."""

    out_dir: str = setting("out", path=True, fix="the checkpoint folder, e.g. out_dir=out")
    checkpoint: str = setting("last", choices=tuple(CHECKPOINTS), fix="last (ckpt.pt) or best (best.pt)")
    init_from: str | None = setting(None, path=True, check=pretrained_rule,
                                    fix="null reports the checkpoint in out_dir; a GPT-2 is reported as it is")
    report_dir: str | None = setting(None, path=True, check=not_a_file,
                                     fix="a folder for the PNGs and head_view.html, or null for <out_dir>/heads "
                                         "(heads-<model> with init_from)")
    device: str = device_setting()
    wandb: bool = setting(False, fix="wandb=true also logs the report to a new wandb run")
    wandb_project: str = setting("gpt-attention", check=not_blank, fix="e.g. wandb_project=gpt-attention")


store_defaults("heads_settings", HeadsConfig)  # config/heads.yaml starts from these
