"""Checkpoints: one folder holds ckpt.pt (weights, optimizer, step, config) and tokenizer.json.

Saves are atomic (temp file in the same folder, fsync, rename), so a crash mid-save leaves the
previous checkpoint loadable. Loads use torch.load(weights_only=True): a checkpoint holds only
tensors and plain Python values, and loading one never runs code from it.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from data.tokenizer import Tokenizer, TokenizerError
from model import GPT, GPTConfig

CHECKPOINT = "ckpt.pt"
TOKENIZER = "tokenizer.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message names the file and the fix."""


def save_checkpoint(out_dir: Path, state: dict, tokenizer: Tokenizer) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir / TOKENIZER)
    path = out_dir / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(out_dir: Path, device: torch.device | str = "cpu") -> dict:
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT
    if not out_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {out_dir} does not exist: train first (python train.py out_dir={out_dir})")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: train first, or point out_dir at a folder holding {CHECKPOINT}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line[:160]}): train again or restore a copy") from None


def load_model(out_dir: Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The trained model (in eval mode), its tokenizer and the raw checkpoint, from one folder."""
    checkpoint = load_checkpoint(out_dir, device)
    tokenizer_path = Path(out_dir) / TOKENIZER
    if not tokenizer_path.is_file():
        raise CheckpointError(
            f"{tokenizer_path} is missing: a checkpoint folder needs the tokenizer it was trained with; "
            "copy tokenizer.json from the prepared data folder (data/prepared/<name>/)"
        )
    try:
        tokenizer = Tokenizer.load(tokenizer_path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if checkpoint.get("tokenizer_hash") != tokenizer.hash:
        raise CheckpointError(
            f"{Path(out_dir) / TOKENIZER} (hash {tokenizer.hash}) is not the tokenizer {CHECKPOINT} was trained with "
            f"({checkpoint.get('tokenizer_hash')}): restore the matching tokenizer.json"
        )
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return model, tokenizer, checkpoint
