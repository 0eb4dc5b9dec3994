"""Checkpoints: one folder holds ckpt.pt (the last save), best.pt (the save with the lowest val
loss so far) and tokenizer.json.

Saves are atomic (temp file in the same folder, fsync, rename), so a crash, a kill -9 or a full
disk mid-save leaves the previous checkpoint loadable; weights that are not finite are never
written. best.pt is a hard link to the ckpt.pt it was (no second copy on disk). Loads use
torch.load(weights_only=True): a checkpoint holds only tensors and plain Python values, and
loading one never runs code from it.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from data.tokenizer import Tokenizer, TokenizerError
from model import GPT, GPTConfig

CHECKPOINT = "ckpt.pt"
BEST = "best.pt"
CHECKPOINTS = {"last": CHECKPOINT, "best": BEST}
TOKENIZER = "tokenizer.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message names the file and the fix."""


def save_checkpoint(out_dir: Path, state: dict, tokenizer: Tokenizer, best: bool = False) -> Path:
    """Write out_dir/ckpt.pt atomically (and make it best.pt too when `best`); return its path.

    Raises CheckpointError, leaving the files already there untouched, when the weights are not
    finite or the folder cannot be written (full disk, read-only, not a folder)."""
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT
    broken = [name for name, tensor in state["model"].items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"not saving step {state.get('step')}: {broken[0]} holds non-finite values; "
                              f"{path} keeps the last finite weights")
    tmp = path.with_name(path.name + ".tmp")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir / TOKENIZER)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        if best:
            link = out_dir / (BEST + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)  # the same file under a second name, replaced atomically
            except OSError:  # a file system without hard links: a copy instead
                shutil.copyfile(path, link)
            link.replace(out_dir / BEST)
        sync_folder(out_dir)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the checkpoint in {out_dir} ({e.strerror or e}): free disk space or choose a "
                              f"writable out_dir; the checkpoints already there are unchanged") from None
    return path


def check_writable(out_dir: Path) -> None:
    """Fail before training, not at the first save, when out_dir cannot hold a checkpoint."""
    out_dir = Path(out_dir)
    probe = out_dir / ".write-test"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"out_dir={out_dir} is not a writable folder ({e.strerror or e}): "
                              "choose another out_dir or fix its permissions") from None


def sync_folder(folder: Path) -> None:
    """fsync the folder itself, so the renames above survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(out_dir: Path, name: str = CHECKPOINT) -> dict:
    """The checkpoint file `name` (ckpt.pt or best.pt) of out_dir, loaded into host memory without
    running any code. Its tensors stay on the CPU: load_state_dict moves weights and optimizer
    state to their device, and the random states it holds must stay CPU ByteTensors."""
    out_dir = Path(out_dir)
    path = out_dir / name
    if not out_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {out_dir} does not exist: train first (python train.py out_dir={out_dir})")
    if not path.is_file():
        other = "checkpoint=last reads ckpt.pt" if name == BEST else "checkpoint=best reads best.pt"
        raise CheckpointError(f"{path} is missing: train first, or point out_dir at a folder holding {name} ({other})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line[:160]}): train again or restore a copy") from None


def load_model(out_dir: Path, device: torch.device | str = "cpu", which: str = "last") -> tuple[GPT, Tokenizer, dict]:
    """The trained model (in eval mode), its tokenizer and the raw checkpoint, from one folder;
    `which` is last (ckpt.pt) or best (best.pt, the lowest val loss)."""
    if which not in CHECKPOINTS:
        raise CheckpointError(f"checkpoint={which!r} must be one of {', '.join(CHECKPOINTS)}")
    checkpoint = load_checkpoint(out_dir, CHECKPOINTS[which])
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
