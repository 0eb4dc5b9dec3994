"""What can go wrong around the training loop, caught here so train.py reads like nanoGPT: a second
run on the same out_dir, a trained run replaced silently, a checkpoint that cannot continue this run,
a NaN or inf step reaching the weights, a Ctrl-C, SIGTERM or SIGHUP losing the steps since the last
save. A first reading can skip this module; trainer/README.md tells the whole story.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from common.cli import on_stop_signals, raise_interrupt
from common.errors import ConfigError
from common.folders import check_writable, folder_lock
from common.settings import show
from data.batches import TrainSampler
from data.checkpoint import BEST, CHECKPOINT, CheckpointError, load_checkpoint, load_weights, saved_model_config
from model import GPT, GPTConfig
from trainer import distributed
from trainer.config import RunConfig, TrainConfig
from trainer.runtime import set_rng_state

# ---------------------------------------------------------------------------------------------
# out_dir and resuming

@contextlib.contextmanager
def claim_out_dir(cfg: RunConfig, out_dir: Path, ranks: distributed.Ranks) -> Iterator[None]:
    """The main process holds out_dir's lock for the whole run, so a second run on the same folder
    stops at once instead of resuming from (and saving over) a live run's checkpoints. A folder holding
    ckpt.pt or best.pt is continued (train.resume), or replaced only with train.overwrite=true."""
    if not ranks.is_main:
        yield
        return
    check_writable(out_dir)  # now, not after an hour of training
    with folder_lock(out_dir, "out_dir"):
        present = [name for name in (CHECKPOINT, BEST) if (out_dir / name).is_file()]
        mode = cfg.train.resume
        if present and (mode == "false" or CHECKPOINT not in present):
            if not cfg.train.overwrite:
                how = "continue it with train.resume=auto, " if CHECKPOINT in present else ""
                raise ConfigError(f"out_dir={out_dir} holds a trained run ({' and '.join(present)}) that "
                                  f"train.resume={mode} would replace at its first evaluation: {how}"
                                  "choose a new out_dir, or replace it with train.overwrite=true")
            print(f"train.overwrite=true: this run replaces {' and '.join(present)} in {out_dir} at its first "
                  "evaluation")
        yield


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
    report_history: dict | None  # heads.metrics.ReportHistory.state(): the attention charts so far


def resume(cfg: RunConfig, out_dir: Path, device: torch.device, model: GPT, model_cfg: GPTConfig,
           optimizers: list, sampler: TrainSampler, tokenizer_hash: str,
           ranks: distributed.Ranks = distributed.Ranks()) -> Resumed:
    """Continue from out_dir/ckpt.pt when train.resume says so: weights, optimizers, step, this rank's
    random state and the sampler, so the resumed run takes the very steps an uninterrupted one would.
    Only weights and optimizer state move to `device`: the random states must stay CPU ByteTensors."""
    path = out_dir / CHECKPOINT
    if cfg.train.resume == "false" or (cfg.train.resume == "auto" and not path.is_file()):
        return Resumed(0, math.inf, 0.0, None)
    checkpoint = load_checkpoint(out_dir)
    saved = {**saved_model_config(checkpoint, path).to_dict(), "tokenizer_hash": checkpoint.get("tokenizer_hash")}
    wanted = {**model_cfg.to_dict(), "tokenizer_hash": tokenizer_hash}
    differing = [f"{k} (checkpoint {saved.get(k)!r}, config {v!r})" for k, v in wanted.items() if saved.get(k) != v]
    lacking = [key for key in RESUME_KEYS if key not in checkpoint]
    if differing or lacking:
        why = ("it differs in " + ", ".join(differing) if differing
               else f"it was saved without {lacking[0]}, needed to continue exactly")
        raise ConfigError(f"cannot resume from {path}: {why}; use the checkpoint's settings, another out_dir, or "
                          "train.resume=false train.overwrite=true to start over")
    load_weights(model, checkpoint["model"], path)
    if len(checkpoint["optimizers"]) != len(optimizers):
        raise ConfigError(f"cannot resume from {path}: it holds {len(checkpoint['optimizers'])} optimizer states, "
                          f"train.optimizer={cfg.train.optimizer} uses {len(optimizers)}; use the checkpoint's "
                          "optimizer")
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


# ---------------------------------------------------------------------------------------------
# stopping


class GracefulStop:
    """The first stop signal asks the loop to finish its step, save and exit 0; a second stops at
    once (saves are atomic, so the last checkpoint stays loadable)."""

    def __init__(self):
        self.requested = False
        self.previous = on_stop_signals(self.handle)

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise_interrupt(signum, frame)
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (press Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class LastSave:
    """Where the run's latest checkpoint is, for the line printed when the run is cut short."""

    out_dir: Path
    step: int | None = None

    def describe(self) -> str:
        if self.step is None:
            return "this run saved no checkpoint"
        return (f"the last checkpoint is {self.out_dir / CHECKPOINT} (step {self.step}); run the same command again "
                "to continue")


# ---------------------------------------------------------------------------------------------
# non-finite steps: a NaN or inf loss or gradient never reaches the weights, and watching for one
# does not make the host wait for the device every step


class NonFiniteError(Exception):
    """Training produced non-finite losses or gradients too many steps in a row."""


def skips_on_device(optimizers: list[torch.optim.Optimizer]) -> bool:
    """True when every optimizer can skip an update from a flag on the device (fused AdamW, Muon)."""
    return all(getattr(optimizer, "_step_supports_amp_scaling", False) for optimizer in optimizers)


def step_unless(nonfinite: torch.Tensor, optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler) -> None:
    """Update the weights unless `nonfinite` (a 0-dim bool tensor on the device) is true."""
    if skips_on_device(optimizers):
        for optimizer in optimizers:
            # the fused kernel leaves weights, moments and step count untouched when found_inf is 1
            # (with fp16, GradScaler puts its own inf/NaN check in its place)
            optimizer.found_inf = nonfinite.float()
            scaler.step(optimizer)
    elif not nonfinite.item():  # the host sync (unfused AdamW, on MPS)
        for optimizer in optimizers:
            scaler.step(optimizer)


def unrecoverable(loss: torch.Tensor, nonfinite: torch.Tensor, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The flag the guard counts: a non-finite gradient norm, except an fp16 overflow the scaler
    recovers from by itself (it skips the step and halves its scale). That leaves a non-finite loss,
    which no scale explains, and an overflow at a scale of 1 or less, where the gradients overflow unscaled."""
    if not scaler.is_enabled():
        return nonfinite
    scale = scaler._get_scale_async()  # the scale this step's loss was multiplied by, still on the device
    return ~torch.isfinite(loss) | (nonfinite & (scale <= 1))


class NonFiniteGuard:
    """Keeps each step's gradient norm on the device and reads them at log time: it prints the skipped
    steps, and after `max_in_row` in a row holds the error that stops training."""

    def __init__(self, max_in_row: int, verbose: bool = True):
        self.max_in_row = max_in_row
        self.verbose = verbose
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, norm, counted), not yet read
        self.in_row = 0
        self.skipped = 0  # over the whole run, as of the last read
        self.failed: NonFiniteError | None = None

    def check(self, step: int, grad_norm: torch.Tensor, counted: torch.Tensor | None = None) -> None:
        """Remember `step`'s (1-based) gradient norm and whether it counts (default: it is NaN or inf). No host sync."""
        counted = ~torch.isfinite(grad_norm) if counted is None else counted
        self.pending.append((step, grad_norm.detach(), counted))

    def read(self) -> None:
        """Count the steps checked since the last read, in order (the host sync: call at log time)."""
        if not self.pending:
            return
        norms = torch.stack([norm for _, norm, _ in self.pending]).tolist()
        counted = torch.stack([flag for _, _, flag in self.pending]).tolist()
        for (step, _, _), norm, count in zip(self.pending, norms, counted):
            if not count:
                self.in_row = 0
                continue
            self.in_row += 1
            self.skipped += 1
            if self.verbose:
                print(f"step {step}: gradient norm is {norm}, update skipped ({self.in_row} in a row, "
                      f"{self.skipped} in this run)", file=sys.stderr, flush=True)
            if self.in_row == self.max_in_row and self.failed is None:
                self.failed = NonFiniteError(
                    f"non-finite loss or gradients at {self.in_row} steps in a row (steps {step - self.in_row + 1} "
                    f"to {step}): training stopped and the last checkpoint keeps the last finite weights; lower "
                    "train.learning_rate, raise train.warmup_iters, or use dtype=float32"
                )
        self.pending.clear()

    def failure(self) -> NonFiniteError | None:
        """The error to stop with once max_in_row steps in a row were skipped (as of the last read), else None."""
        return self.failed
