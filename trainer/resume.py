"""out_dir's run: claim the folder for this run, never replace a trained run silently, and
continue one exactly where it stopped (weights, optimizers, step, random states, sampler)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from common.errors import ConfigError
from common.folders import check_writable, folder_lock
from common.settings import show
from data.batches import TrainSampler
from model import GPT, GPTConfig
from trainer import distributed
from trainer.checkpoint import (
    BEST,
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    load_weights,
    saved_model_config,
)
from trainer.config import RunConfig, TrainConfig
from trainer.runtime import set_rng_state


@contextlib.contextmanager
def claim_out_dir(cfg: RunConfig, out_dir: Path, ranks: distributed.Ranks) -> Iterator[None]:
    """The main process holds out_dir's lock for the whole run, so a second run on the same folder
    stops at once instead of resuming from (and saving over) a live run's checkpoints."""
    if not ranks.is_main:
        yield
        return
    check_writable(out_dir)  # now, not after an hour of training
    with folder_lock(out_dir, "out_dir"):
        check_existing_run(cfg, out_dir)
        yield


def check_existing_run(cfg: RunConfig, out_dir: Path) -> None:
    """Never replace a trained run silently: a folder holding ckpt.pt or best.pt is continued
    (train.resume=auto/true), or replaced only with train.overwrite=true."""
    present = [name for name in (CHECKPOINT, BEST) if (out_dir / name).is_file()]
    mode = cfg.train.resume
    if not present or (mode != "false" and CHECKPOINT in present):
        return
    if not cfg.train.overwrite:
        how = "continue it with train.resume=auto, " if CHECKPOINT in present else ""
        raise ConfigError(f"out_dir={out_dir} holds a trained run ({' and '.join(present)}) that "
                          f"train.resume={mode} would replace at its first evaluation: {how}"
                          "choose a new out_dir, or replace it with train.overwrite=true")
    print(f"train.overwrite=true: this run replaces {' and '.join(present)} in {out_dir} at its first evaluation")


# what a checkpoint must hold to continue exactly where it stopped
RESUME_KEYS = ("model", "optimizers", "step", "best_val_loss", "elapsed", "rng", "sampler")


# the settings that change what a resumed run computes (other data or another model is refused in resume);
# not how often it logs or saves, how many bad steps it bears, or how it started
TRAINING_SETTINGS = ("seed", "dtype", *(f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.name not in
                                        ("resume", "overwrite", "log_interval", "eval_interval", "max_nonfinite")))


def changed_settings(saved: dict, now: dict) -> list[str]:
    """`train.batch_size 8 -> 16` for each of TRAINING_SETTINGS where the saved run's config and this one differ."""
    def value(config: dict, key: str):
        group, _, name = key.rpartition(".")
        return (config.get(group) or {}).get(name) if group else config.get(name)

    return [f"{key} {show(value(saved, key))} -> {show(value(now, key))}" for key in TRAINING_SETTINGS
            if value(saved, key) is not None and value(saved, key) != value(now, key)]


class Resumed(NamedTuple):
    step: int  # the step to start from
    best_val_loss: float
    elapsed: float  # training seconds already spent (the LR schedule of a time budget)
    report_history: dict | None  # heads.report.ReportHistory.state(): the attention charts so far


def resume(cfg: RunConfig, out_dir: Path, device: torch.device, model: GPT, model_cfg: GPTConfig,
           optimizers: list, sampler: TrainSampler, tokenizer_hash: str,
           ranks: distributed.Ranks = distributed.Ranks()) -> Resumed:
    """Continue from out_dir/ckpt.pt when train.resume says so; where to start, and what the run
    had reached (a fresh start when there is nothing to continue).

    The checkpoint is read into host memory and only the weights and optimizer state move to
    `device` (by load_state_dict): the random states must stay CPU ByteTensors."""
    mode = cfg.train.resume  # auto | true | false (typed: hydra's bools are strings here)
    if mode == "false" or (mode == "auto" and not (out_dir / CHECKPOINT).is_file()):
        return Resumed(0, math.inf, 0.0, None)
    path = out_dir / CHECKPOINT
    checkpoint = load_checkpoint(out_dir)
    saved = {**saved_model_config(checkpoint, path).to_dict(), "tokenizer_hash": checkpoint.get("tokenizer_hash")}
    wanted = {**model_cfg.to_dict(), "tokenizer_hash": tokenizer_hash}
    differing = [f"{k} (checkpoint {saved.get(k)!r}, config {wanted[k]!r})" for k in wanted if saved.get(k) != wanted[k]]
    lacking = [key for key in RESUME_KEYS if key not in checkpoint]
    if differing or lacking:
        raise ConfigError(
            f"cannot resume from {path}: " + ("it differs in " + ", ".join(differing) if differing
                                              else f"it was saved without {lacking[0]}, needed to continue exactly")
            + "; use the checkpoint's settings, another out_dir, or train.resume=false train.overwrite=true to start over"
        )
    load_weights(model, checkpoint["model"], path)
    if len(checkpoint["optimizers"]) != len(optimizers):
        raise ConfigError(f"cannot resume from {path}: it holds {len(checkpoint['optimizers'])} optimizer states, "
                          f"train.optimizer={cfg.train.optimizer} uses {len(optimizers)}; use the checkpoint's optimizer")
    for optimizer, state in zip(optimizers, checkpoint["optimizers"]):
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit the model ({e}): use the checkpoint's "
                                  "train.optimizer, or train.resume=false train.overwrite=true to start over") from None
    saved_rngs = checkpoint["rng"] if isinstance(checkpoint["rng"], list) else [checkpoint["rng"]]  # one per rank
    try:
        if ranks.rank < len(saved_rngs):
            set_rng_state(saved_rngs[ranks.rank], device)
        sampler.generator.set_state(checkpoint["sampler"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its random states are unreadable ({e}): restore a copy, or "
                              "train.resume=false train.overwrite=true to start over") from None
    if ranks.is_main and len(saved_rngs) != ranks.world_size:
        print(f"note: {path} was saved by {len(saved_rngs)} process(es), this run has "
              f"{ranks.world_size}: ranks without a saved random state keep their seeded one (dropout masks "
              "differ from an uninterrupted run; the batches do not)")
    step = checkpoint["step"]
    if step > cfg.train.max_iters:
        raise ConfigError(f"train.max_iters={cfg.train.max_iters} is below the step {path} is at ({step}): raise "
                          "train.max_iters to train on, or train.resume=false train.overwrite=true to start over")
    print(f"resuming from {path} at step {step}")
    changed = changed_settings(checkpoint.get("config") or {}, dataclasses.asdict(cfg))
    if changed and ranks.is_main:
        print(f"note: {path} was trained with other settings ({', '.join(changed)}): the steps from here use this "
              "command's, so the run differs from an uninterrupted one with either")
    return Resumed(step, checkpoint["best_val_loss"], checkpoint["elapsed"], checkpoint.get("report_history"))
