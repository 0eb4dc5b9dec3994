"""python -m data.export: a training run's checkpoint as a Hugging Face GPT-2 folder, which
transformers loads with GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained.

    python -m data.export out_dir=out                      # out/best.pt -> out/hf/
    python -m data.export out_dir=out checkpoint=last to=~/gpt2-mine
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from common.settings import not_a_file, setting, store_defaults, typed
from data.checkpoint import CHECKPOINTS, load_model
from data.gpt2 import export_gpt2


@dataclasses.dataclass
class ExportConfig:
    """python -m data.export's config (config/export.yaml)."""

    out_dir: str = setting("out", path=True, fix="the training run's folder, e.g. out_dir=out")
    checkpoint: str = setting("best", choices=tuple(CHECKPOINTS), fix="best (best.pt) or last (ckpt.pt)")
    to: str | None = setting(None, path=True, check=not_a_file,
                             fix="a folder for the Hugging Face files, or null for <out_dir>/hf")


store_defaults("export_settings", ExportConfig)  # config/export.yaml starts from these


def export_checkpoint(cfg: DictConfig) -> Path:
    """Export the checkpoint cfg names; return the folder written."""
    settings = typed(ExportConfig, cfg, "")  # every setting typed and in range before anything is read
    folder = Path(settings.to) if settings.to is not None else Path(settings.out_dir) / "hf"
    model, tokenizer, checkpoint = load_model(settings.out_dir, "cpu", settings.checkpoint)
    export_gpt2(model, folder, tokenizer)  # a PretrainedError is a UserError: one line, exit 2
    print(f"wrote {folder}/ ({settings.checkpoint} checkpoint, step {checkpoint.get('step')}): load it with "
          f"transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained")
    return folder


if __name__ == "__main__":
    from common.cli import hydra_entry

    hydra_entry("export", "python -m data.export", ExportConfig, export_checkpoint,
                lambda cfg: "no export was written")
