"""The Weights & Biases run: offline by itself when there is no API key, never a login prompt.

wandb.mode: auto (online with an API key, else offline) | online | offline | disabled.
Offline runs are written under <out_dir>/wandb/ and can be uploaded later with `wandb sync`.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from trainer.runtime import ConfigError

MODES = ("auto", "online", "offline", "disabled")


def has_api_key() -> bool:
    """An API key in WANDB_API_KEY or in the netrc file that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"wandb.mode={mode!r} must be one of {', '.join(MODES)}")
    if mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
    if mode == "online" and not has_api_key():
        raise ConfigError(
            "wandb.mode=online but no wandb API key is set: run `wandb login` or set WANDB_API_KEY, "
            "or use wandb.mode=offline (then `wandb sync` later)"
        )
    return mode


def start_run(mode: str, project: str, name: str | None, config: dict, out_dir: Path):
    """A wandb Run, or None when mode is disabled (then nothing is written)."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=project,
        name=name,
        config=config,
        mode=mode,
        dir=str(out_dir),
        settings=wandb.Settings(console="off", silent=True),
    )
