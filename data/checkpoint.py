"""Checkpoints: a folder holds ckpt.pt (the last save), best.pt (a hard link to the save with the lowest val loss so
far) and tokenizer.json. Saves are atomic (common/folders.py), so a crash, kill -9, Ctrl-C or full disk mid-save leaves
the previous checkpoint loadable; weights that are not finite are never written. Loads never run code from the file
(torch.load's weights_only) and are checked before anything uses them: known model settings, every tensor present
with the model's shape, every weight finite.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shlex
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from common.errors import UserError
from common.folders import atomic_write, temp_path
from data.tokenizer import Tokenizer
from model import GPT, GPTConfig

CHECKPOINT = "ckpt.pt"
BEST = "best.pt"
CHECKPOINTS = {"last": CHECKPOINT, "best": BEST}
TOKENIZER = "tokenizer.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


def save_torch(state: dict, file: BinaryIO) -> None:
    """torch.save, raising the OSError or KeyboardInterrupt that stopped a write as itself: torch's zip writer then
    fails to close with `RuntimeError: ... unexpected pos`, which holds the cause only as its __context__."""
    try:
        torch.save(state, file)
    except RuntimeError as e:
        if isinstance(e.__context__, (OSError, KeyboardInterrupt)):
            raise e.__context__ from None
        raise


def save_checkpoint(out_dir: Path, state: dict, tokenizer: Tokenizer, best: bool = False) -> Path:
    """Write out_dir/ckpt.pt atomically (and make it best.pt too when `best`); return its path. A CheckpointError
    (weights not finite, a folder that cannot be written) leaves the files already there untouched."""
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT
    broken = [name for name, tensor in state["model"].items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"not saving step {state.get('step')}: {broken[0]} holds non-finite values; "
                              f"{path} keeps the last finite weights")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer_path = out_dir / TOKENIZER
        tokenizer_json = tokenizer.to_json().encode("utf-8")
        if not tokenizer_path.is_file() or tokenizer_path.read_bytes() != tokenizer_json:
            atomic_write(tokenizer_path, lambda f: f.write(tokenizer_json))
        atomic_write(path, lambda f: save_torch(state, f))
        if best:
            link = temp_path(out_dir / BEST)
            try:
                link.unlink(missing_ok=True)
                try:
                    os.link(path, link)  # the same file under a second name, replaced atomically
                except OSError:  # a file system without hard links: a copy instead
                    shutil.copyfile(path, link)
                link.replace(out_dir / BEST)
            finally:
                with contextlib.suppress(OSError):
                    link.unlink(missing_ok=True)
        fd = os.open(out_dir, os.O_RDONLY)  # fsync the folder itself, so the renames survive a power cut
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint in {out_dir} ({e.strerror or e}): free disk space or "
                              "choose a writable out_dir; the checkpoints already there are unchanged") from None
    return path


def load_checkpoint(out_dir: Path, name: str = CHECKPOINT) -> dict:
    """out_dir's checkpoint `name`, loaded on the CPU without running code: load_state_dict moves weights and
    optimizer state to their device, and the random states it holds must stay CPU ByteTensors."""
    out_dir = Path(out_dir)
    path = out_dir / name
    if not out_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {out_dir} does not exist: train first "
                              f"(python train.py {shlex.quote(f'out_dir={out_dir}')})")
    if not path.is_file():
        other = "checkpoint=last reads ckpt.pt" if name == BEST else "checkpoint=best reads best.pt"
        raise CheckpointError(f"{path} is missing: train first, or point out_dir at a folder holding {name} ({other})")
    try:
        with warnings.catch_warnings():  # torch warns about files in its legacy format; they load the same
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path} is truncated or corrupt (not a torch checkpoint): train again or restore "
                                  "a copy") from None
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain values, which could run code "
                              "when loaded: it was not loaded and nothing in it was run; use a checkpoint written by "
                              "train.py") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line[:160]}): train again or restore "
                              "a copy") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of train.py (it holds no model weights): point out_dir at "
                              "a folder train.py wrote")
    return checkpoint


def saved_model_config(checkpoint: dict, path: Path) -> GPTConfig:
    """The architecture a checkpoint was trained with, checked as the config is."""
    settings = checkpoint.get("model_config")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path} has no model_config (the architecture it was trained with): it was not written "
                              "by train.py; train again or restore a copy")
    unknown = sorted(set(settings) - set(GPTConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(f"{path} has unknown model settings ({', '.join(map(str, unknown))}): it was written by "
                              "another version of this code; use that version or train again")
    try:
        return GPTConfig(**settings)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has invalid model settings ({e}): train again or restore a copy") from None


def load_weights(module: torch.nn.Module, weights: dict, path: Path) -> None:
    """Load `weights` into `module` once every tensor is there, of the module's shape and finite."""
    expected = module.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        what = f"misses {missing[0]}" if missing else f"has {unexpected[0]}, which the model does not"
        more = len(missing) + len(unexpected) - 1
        raise CheckpointError(f"{path} {what}" + (f" (and {more} more tensor differences)" if more else "")
                              + ": it does not fit its model_config; train again or restore a copy")
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{path}: {name} has shape {shape}, the model needs {tuple(expected[name].shape)}: "
                                  "it does not fit its model_config; train again or restore a copy")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: {name} holds NaN or inf values, so the model cannot run: use another "
                                  "checkpoint (best.pt or ckpt.pt) or train again")
    module.load_state_dict(weights)


def load_model(out_dir: Path, device: torch.device | str = "cpu", which: str = "last") -> tuple[GPT, Tokenizer, dict]:
    """out_dir's model (in eval mode), tokenizer and checkpoint; `which` is last (ckpt.pt) or best (best.pt)."""
    path = Path(out_dir) / CHECKPOINTS[which]
    checkpoint = load_checkpoint(out_dir, CHECKPOINTS[which])
    tokenizer_path = Path(out_dir) / TOKENIZER
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{tokenizer_path} is missing: a checkpoint folder needs the tokenizer it was trained "
                              "with; copy tokenizer.json from the prepared data folder (data/prepared/<name>/)")
    tokenizer = Tokenizer.load(tokenizer_path)  # a TokenizerError is a UserError too: one line, exit 2
    if checkpoint.get("tokenizer_hash") != tokenizer.hash:
        raise CheckpointError(f"{tokenizer_path} (hash {tokenizer.hash}) is not the tokenizer {path.name} was trained "
                              f"with ({checkpoint.get('tokenizer_hash')}): restore the matching tokenizer.json")
    config = saved_model_config(checkpoint, path)
    if config.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{path} has vocab_size {config.vocab_size} but {tokenizer_path} has "
                              f"{tokenizer.vocab_size} tokens: restore the matching tokenizer.json")
    model = GPT(config)
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), tokenizer, checkpoint


def load_inference_model(out_dir: Path, device: torch.device | str = "cpu", which: str = "last",
                         init_from: str | None = None) -> tuple[GPT, Tokenizer, dict]:
    """sample.py's and heads.report's model: the pretrained GPT-2 `init_from` with its own tokenizer, else load_model's.
    A pretrained model's checkpoint is {"init_from": its folder, "step": None}: no probes, no training here."""
    if init_from is None:
        return load_model(out_dir, device, which)
    from data.gpt2 import check_vocab, gpt2_tokenizer, load_gpt2, resolve_gpt2

    folder = resolve_gpt2(init_from)
    model, config = load_gpt2(folder)
    tokenizer = gpt2_tokenizer(folder)
    check_vocab(tokenizer, config, folder)
    return model.to(device).eval(), tokenizer, {"init_from": str(folder), "step": None}
