"""Train the GPT: prepare the data if needed, then AdamW with warmup + cosine decay, periodic
validation in bits per byte (overall, en, zh, pairs), checkpoints, a wandb run and an attention
report of every head.

    python train.py                  # GPU default (6 layers, 6 heads, 384 dims, context 256)
    python train.py preset=cpu       # sized for a 2-core CPU
    python train.py model.n_layer=8 train.max_iters=2000 wandb.mode=disabled
    python train.py init_from=gpt2 model.block_size=256   # fine-tune GPT-2 (or init_from=/path/to/hf-folder)
    torchrun --standalone --nproc_per_node=8 train.py     # data parallel on 8 GPUs
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from common.cli import run_entry
from common.errors import ConfigError
from common.interrupt import GracefulStop
from common.settings import typed
from common.sweeps import separate_sweep_jobs
from model import GPT
from trainer import distributed
from trainer.checkpoint import LastSave
from trainer.config import SCRATCH, RunConfig
from trainer.nonfinite import NonFiniteError, NonFiniteGuard, skips_on_device
from trainer.resume import claim_out_dir
from trainer.runtime import resolve_device, resolve_dtype, reuse_host_memory
from trainer.step import train_step
from trainer.training import RunData, Training, prepared_data, pretrained_model


def check_config(cfg: RunConfig, world_size: int) -> None:
    """What depends on the launch; each setting alone was checked by typed(RunConfig, ...)."""
    tc = cfg.train
    if tc.batch_size % (world_size * tc.grad_accum):
        raise ConfigError(
            f"train.batch_size={tc.batch_size} must be divisible by processes x train.grad_accum = "
            f"{world_size} x {tc.grad_accum}: it is the global batch of one optimizer step"
        )


def train(cfg: RunConfig, ranks: distributed.Ranks, device_name: str, saved: LastSave) -> dict:
    """Check the settings, load init_from's model, claim out_dir, then fit."""
    check_config(cfg, ranks.world_size)
    device = resolve_device(device_name)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu":
        reuse_host_memory()  # each step reuses the pages of the last one instead of faulting in new ones
    out_dir = Path(cfg.out_dir)
    # before out_dir is claimed: a model that cannot be downloaded or read, data that does not fit
    # it, or a probe too short fails with nothing written
    pretrained = pretrained_model(cfg, ranks.is_main) if cfg.init_from != SCRATCH else None
    data = prepared_data(cfg, ranks, pretrained)
    with claim_out_dir(cfg, out_dir, ranks):
        return fit(cfg, ranks, device, dtype, out_dir, saved, data, pretrained)


def fit(cfg: RunConfig, ranks: distributed.Ranks, device: torch.device, dtype: torch.dtype, out_dir: Path,
        saved: LastSave, data: RunData, pretrained: GPT | None = None) -> dict:
    """Build the run (continuing out_dir's if asked); then, step by step: evaluate and report on schedule,
    set the learning rate, take an optimizer step, log. Stop at the step or time budget (whichever
    ends first), at Ctrl-C or SIGTERM (saving), or after too many non-finite steps in a row."""
    tc = cfg.train
    t = Training.build(cfg, ranks, device, dtype, out_dir, saved, data, pretrained)
    start_step = t.resumed.step
    if start_step:
        saved.step = start_step  # ckpt.pt already holds it
    guard = NonFiniteGuard(tc.max_nonfinite, verbose=ranks.is_main)
    sync_every_step = not skips_on_device(t.optimizers)  # unfused AdamW (MPS) must know on the host whether to step
    stop = GracefulStop()
    attn_every = cfg.wandb.attn_every if cfg.wandb.mode != "disabled" else 0  # disabled computes nothing
    last_log = time.time()
    t.started = last_log - t.resumed.elapsed  # a resumed time budget goes on where it stopped
    metrics: dict = {}
    last_step, interrupted = tc.max_iters, False
    try:
        for step in range(start_step, tc.max_iters + 1):
            if last_step == tc.max_iters and t.time_is_up():
                last_step = step  # evaluate, save and stop here
            fresh = step > start_step or start_step == 0  # a resumed step was evaluated before it was saved
            evaluate_now = fresh and (step % tc.eval_interval == 0 or step == last_step)
            report_now = fresh and attn_every > 0 and (step % attn_every == 0 or step == last_step)  # step 0 too
            if evaluate_now or report_now:
                metrics = t.evaluate_and_report(step, evaluate_now, report_now, step == last_step) or metrics
                last_log = time.time()  # evaluation and reports do not count as training throughput
            if step == last_step:
                break
            lr = t.set_learning_rate(step)

            x, y = t.sampler.next_batch()  # this rank's share of the global batch
            step_loss = train_step(t.step_model, t.model, t.optimizers, t.scaler, guard, x, y, step + 1, tc.grad_accum,
                                   tc.grad_clip, dtype, device, t.ddp)

            log_now = (step + 1) % tc.log_interval == 0
            if log_now or sync_every_step:
                guard.read()
            if log_now:
                now = time.time()
                t.log_progress(step + 1, step_loss, lr, max(now - last_log, 1e-9) / tc.log_interval, guard)
                last_log = now
            if guard.failure():
                break  # raised below, once the wandb run is closed
            if distributed.any_rank(stop.requested, ranks):
                t.save_interrupted(step + 1, metrics)
                interrupted = True
                break
    finally:
        stop.restore()  # the default Ctrl-C again, also when the loop raised
    guard.read()
    failure = guard.failure()
    # the done line also when Ctrl-C came during the final evaluation
    t.finish(last_step, metrics, completed=not interrupted and not failure, failed=failure is not None)
    if failure:
        raise failure
    return metrics


@hydra.main(config_path="config", config_name="train", version_base=None)
def main(raw: DictConfig) -> None:
    ranks, device_name = distributed.setup(str(raw.device))
    saved = LastSave(Path("."))

    def job() -> None:
        separate_sweep_jobs(raw)
        cfg = typed(RunConfig, raw, "")  # every setting checked before anything is read or written
        saved.out_dir = Path(cfg.out_dir)
        try:
            train(cfg, ranks, device_name, saved)
        except NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    try:
        run_entry(job, interrupted=saved.describe)
    finally:
        distributed.teardown(ranks)


if __name__ == "__main__":
    from common.cli import prepare_entry

    prepare_entry("train", "python train.py", RunConfig)
    main()
