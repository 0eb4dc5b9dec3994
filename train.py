"""Train the GPT: prepare the data if needed, then AdamW with warmup + cosine decay, periodic
validation in bits per byte (overall, en, zh, pairs), checkpoints, a wandb run and an attention
report of every head.

    python train.py                  # GPU default (6 layers, 6 heads, 384 dims, context 256)
    python train.py preset=cpu       # sized for a 2-core CPU
    python train.py model.n_layer=8 train.max_iters=2000 wandb.mode=disabled
    torchrun --standalone --nproc_per_node=8 train.py     # data parallel on 8 GPUs
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
import torch
from omegaconf import DictConfig

from data.batches import TokenBins, TrainSampler
from data.prepare import prepare
from heads.probes import configured_probes
from model import GPT, GPTConfig
from trainer import distributed
from trainer.checkpoint import (BEST, CHECKPOINT, CheckpointError, check_writable, load_checkpoint, load_weights,
                                save_checkpoint, saved_model_config)
from trainer.cli import run_entry
from trainer.config import RunConfig
from trainer.evaluate import evaluate
from trainer.lock import folder_lock
from trainer.mfu import flops_per_token, mfu, peak_flops
from trainer.nonfinite import NonFiniteError, NonFiniteGuard, skips_on_device
from trainer.optim import make_optimizers
from trainer.runtime import (ConfigError, resolve_device, resolve_dtype, reuse_host_memory, rng_state, seed_everything,
                             set_rng_state)
from trainer.schedule import decay_progress, learning_rate
from trainer.settings import typed
from trainer.step import loss_scaler, train_step
from trainer.wandb_run import start_run


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def check_config(cfg: RunConfig, world_size: int) -> None:
    """What depends on the launch; each setting alone was checked by typed(RunConfig, ...)."""
    tc = cfg.train
    if tc.batch_size % (world_size * tc.grad_accum):
        raise ConfigError(
            f"train.batch_size={tc.batch_size} must be divisible by processes x train.grad_accum = "
            f"{world_size} x {tc.grad_accum}: it is the global batch of one optimizer step"
        )


class GracefulStop:
    """The first SIGINT or SIGTERM asks the loop to finish its step, save and exit 0; a second
    SIGINT stops at once (saves are atomic, so the last checkpoint stays loadable)."""

    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (press Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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


def resume(cfg: RunConfig, out_dir: Path, device: torch.device, model: GPT, model_cfg: GPTConfig,
           optimizers: list, sampler: TrainSampler, tokenizer_hash: str,
           ranks: distributed.Ranks = distributed.Ranks()) -> tuple[int, float, float]:
    """Continue from out_dir/ckpt.pt when train.resume says so; return the step to start from, the
    best val loss so far and the training seconds already spent (the LR schedule of a time budget).

    The checkpoint is read into host memory and only the weights and optimizer state move to
    `device` (by load_state_dict): the random states must stay CPU ByteTensors."""
    mode = cfg.train.resume  # auto | true | false (typed: hydra's bools are strings here)
    if mode == "false" or (mode == "auto" and not (out_dir / CHECKPOINT).is_file()):
        return 0, math.inf, 0.0
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
    print(f"resuming from {path} at step {checkpoint['step']}")
    return checkpoint["step"], checkpoint["best_val_loss"], checkpoint["elapsed"]


def train(cfg: RunConfig, ranks: distributed.Ranks, device_name: str, saved: LastSave) -> dict:
    """Check the settings, claim out_dir, then fit."""
    check_config(cfg, ranks.world_size)
    device = resolve_device(device_name)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu":
        reuse_host_memory()  # each step reuses the pages of the last one instead of faulting in new ones
    out_dir = Path(cfg.out_dir)
    with claim_out_dir(cfg, out_dir, ranks):
        return fit(cfg, ranks, device, dtype, out_dir, saved)


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


def fit(cfg: RunConfig, ranks: distributed.Ranks, device: torch.device, dtype: torch.dtype, out_dir: Path,
        saved: LastSave) -> dict:
    """Prepare the data, build the model, resume if asked, and run the training loop."""
    tc = cfg.train
    data_cfg = cfg.data
    if ranks.local_rank == 0:  # one process per node: nodes need not share a file system
        prepare(data_cfg)
    distributed.wait_for_data(ranks)  # the other ranks wait for their node's bins
    bins = TokenBins(data_cfg.dir)
    model_cfg = cfg.gpt_config(bins.tokenizer.vocab_size)
    bins.check_block_size(model_cfg.block_size)
    probes = configured_probes(cfg.wandb.probes, bins, cfg.wandb.probe_tokens)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = GPT(model_cfg).to(device)
    optimizers = make_optimizers(model, tc, device)
    scaler = loss_scaler(device, dtype)
    step_model, ddp = distributed.wrap_model(model, cfg.compile, ranks, device)
    micro_batch = tc.batch_size // (ranks.world_size * tc.grad_accum)  # what one forward pass of a rank sees
    sampler = TrainSampler(bins.splits["train"], model_cfg.block_size, tc.batch_size, cfg.seed, ranks.rank, ranks.world_size)
    run_config = dataclasses.asdict(cfg)  # plain values: for wandb and the checkpoint
    run = start_run(cfg.wandb.mode, cfg.wandb.project, cfg.wandb.name, run_config, out_dir) if ranks.is_main else None
    flops_per_step = flops_per_token(model) * tc.batch_size * model_cfg.block_size
    peak, peak_source = peak_flops(device, dtype) if ranks.is_main else (None, "")
    if ranks.is_main:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers x {model_cfg.n_head} heads "
              f"x {model_cfg.n_embd // model_cfg.n_head} dims, context {model_cfg.block_size}, attn_impl={model_cfg.attn_impl}, "
              f"pos_encoding={model_cfg.pos_encoding} | {device}, {str(dtype).removeprefix('torch.')}, "
              f"compile={cfg.compile}, {ranks.world_size} process(es), grad_accum {tc.grad_accum}"
              + (f" | peak {peak / 1e12:.2f} TFLOP/s ({peak_source})" if peak else ""))

    def save(step: int, metrics: dict, rngs: list[dict], best: bool = False) -> None:
        """Everything needed to continue exactly: weights, optimizer, step, every rank's RNG and the sampler state."""
        state = {
            "model": model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in optimizers],
            "step": step,
            "model_config": model_cfg.to_dict(),
            "config": run_config,
            "val_metrics": metrics,
            "best_val_loss": best_val_loss,
            "elapsed": time.time() - started,
            "tokenizer_hash": bins.tokenizer.hash,
            "probes": [[probe.name, probe.text] for probe in probes],
            "rng": rngs,  # one per rank, in rank order
            "sampler": sampler.generator.get_state(),
        }
        save_checkpoint(out_dir, state, bins.tokenizer, best)
        saved.step = step

    def evaluate_and_save(step: int, rngs: list[dict]) -> dict:
        nonlocal best_val_loss
        metrics = evaluate(model, bins, model_cfg.block_size, tc.eval_windows, micro_batch, device, dtype)
        groups = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if k.count("/") == 2 and k.endswith("bpb"))
        best = metrics["val/loss"] < best_val_loss
        best_val_loss = min(best_val_loss, metrics["val/loss"])
        print(f"eval step {step} ({time.time() - started:.1f}s): val loss {metrics['val/loss']:.4f} | bpb {metrics['val/bpb']:.3f} "
              f"({groups})" + (" | new best" if best else ""))
        save(step, metrics, rngs, best)
        if run is not None:
            run.log(metrics, step=step)
        return metrics

    def report_heads(step: int) -> None:
        """What every head does, to wandb: maps come from the explicit path, training is untouched."""
        if run is None or not run.active:
            return  # wandb failed earlier (warned once): nothing would receive the report
        from heads.report import build_report, log_report, print_top_heads  # matplotlib: only runs that report pay for it

        started_report = time.time()
        report = build_report(model, bins.tokenizer, probes, cfg.wandb.probe_tokens, cfg.wandb.table_rows)
        log_report(run, report, step)
        print(f"attention report at step {step} in {time.time() - started_report:.1f}s")
        print_top_heads(report)

    start_step, best_val_loss, elapsed = resume(cfg, out_dir, device, model, model_cfg, optimizers, sampler,
                                                bins.tokenizer.hash, ranks)
    if start_step:
        saved.step = start_step  # ckpt.pt already holds it
    guard = NonFiniteGuard(tc.max_nonfinite, verbose=ranks.is_main)
    sync_every_step = not skips_on_device(optimizers)  # unfused AdamW (MPS) must know on the host whether to step
    stop = GracefulStop()
    attn_every = cfg.wandb.attn_every if cfg.wandb.mode != "disabled" else 0  # disabled computes nothing
    last_log = time.time()
    started = last_log - elapsed  # a resumed time budget goes on where it stopped
    metrics: dict = {}
    last_step = tc.max_iters
    interrupted = False
    try:
        for step in range(start_step, tc.max_iters + 1):
            if tc.max_seconds and last_step == tc.max_iters and distributed.any_rank(time.time() - started >= tc.max_seconds, ranks):
                last_step = step  # the time budget is spent (on any rank): evaluate, save and stop here
            fresh = step > start_step or start_step == 0  # a resumed step was evaluated before it was saved
            eval_now = fresh and (step % tc.eval_interval == 0 or step == last_step)
            report_now = fresh and attn_every > 0 and step > 0 and (step % attn_every == 0 or step == last_step)
            if eval_now:
                rngs = distributed.gather_to_main(rng_state(device), ranks)  # every rank's random state
                if ranks.is_main:
                    metrics = evaluate_and_save(step, rngs)
            if ranks.is_main and report_now:
                report_heads(step)
            if eval_now or report_now:
                distributed.barrier(ranks)  # the other ranks wait for rank 0
                last_log = time.time()  # evaluation and reports do not count as training throughput
            if step == last_step:
                break
            progress = decay_progress(step, tc.warmup_iters, tc.lr_decay_iters, time.time() - started, tc.max_seconds)
            lr = learning_rate(step, tc.learning_rate, tc.min_lr, tc.warmup_iters, progress)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

            x, y = sampler.next_batch()  # this rank's share of the global batch
            step_loss = train_step(step_model, model, optimizers, scaler, guard, x, y, step + 1, tc.grad_accum,
                                   tc.grad_clip, dtype, device, ddp)

            log_now = (step + 1) % tc.log_interval == 0
            if log_now or sync_every_step:
                guard.read()
            if log_now:
                loss_value = distributed.mean_across_ranks(step_loss, ranks)
                now = time.time()
                seconds_per_step = max(now - last_log, 1e-9) / tc.log_interval
                tokens_per_second = tc.batch_size * model_cfg.block_size / seconds_per_step
                flops_per_second = flops_per_step / seconds_per_step
                elapsed = now - started
                eta = elapsed / (step + 1) * (tc.max_iters - step - 1)
                if tc.max_seconds:
                    eta = min(eta, max(0.0, tc.max_seconds - elapsed))
                utilisation = mfu(flops_per_second, peak, ranks.world_size) if peak else None
                if ranks.is_main:
                    mfu_text = f", MFU {100 * utilisation:.1f}%" if peak else ""
                    print(f"step {step + 1}/{tc.max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | "
                          f"{tokens_per_second / 1e3:.1f}k tok/s | {flops_per_second / 1e9:.1f} GFLOP/s{mfu_text} | "
                          f"{format_seconds(elapsed)} elapsed | ETA {format_seconds(eta)}"
                          + (f" | {guard.skipped} non-finite steps skipped" if guard.skipped else ""))
                if run is not None:
                    entry = {"train/loss": loss_value, "train/lr": lr, "train/tokens_per_second": tokens_per_second,
                             "train/flops_per_second": flops_per_second, "train/skipped_steps": guard.skipped}
                    if peak:
                        entry["train/mfu"] = utilisation
                    run.log(entry, step=step + 1)
                last_log = now
            if guard.failure():
                break  # raised below, once the wandb run is closed
            if distributed.any_rank(stop.requested, ranks):
                rngs = distributed.gather_to_main(rng_state(device), ranks)
                if ranks.is_main:
                    save(step + 1, metrics, rngs)
                    print(f"interrupted after step {step + 1}: checkpoint in {out_dir / CHECKPOINT}; "
                          f"run the same command again to continue (train.resume=auto)")
                interrupted = True
                break
    finally:
        stop.restore()  # the default Ctrl-C again, also when the loop raised
    guard.read()
    failure = guard.failure()
    if ranks.is_main and not interrupted and not failure:  # also when Ctrl-C came during the final evaluation
        budget = (f"the time budget train.max_seconds={tc.max_seconds:g} ran out first" if last_step < tc.max_iters
                  else f"train.max_iters={tc.max_iters}")
        reached = f", val bpb {metrics['val/bpb']:.3f}" if "val/bpb" in metrics else ""
        print(f"done in {format_seconds(time.time() - started)} at step {last_step} ({budget}){reached}: "
              f"checkpoint in {out_dir / CHECKPOINT}")
    if run is not None:
        run.summary(metrics)
        where = run.finish(exit_code=1 if failure else 0)
        if where:
            print(where)
    if failure:
        raise failure
    return metrics


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


def sweep_point() -> str | None:
    """Under `python train.py -m a=1,2 ...`, this job's point of the sweep as `a=2` (the swept keys
    only, as the job got them); None in a single run, or when out_dir itself is swept."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(
        [arg for arg in sys.argv[1:] if not arg.startswith("-")]) if o.is_sweep_override()}
    if "out_dir" in swept:
        return None
    point = [item for item in HydraConfig.get().overrides.task if item.split("=", 1)[0].lstrip("+") in swept]
    return ",".join(point).replace("/", "_") or f"job{HydraConfig.get().job.num}"


def separate_sweep_jobs(raw: DictConfig) -> None:
    """Every job of a sweep trains in its own out_dir/<point> under its own wandb name: sharing
    one folder, the second job would resume the first's finished run (or fail on a new shape)."""
    point = sweep_point()
    if point is not None:
        raw.out_dir = str(Path(str(raw.out_dir)) / point)
        raw.wandb.name = f"{raw.wandb.name}-{point}" if raw.wandb.name else point


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
    from trainer.cli import prepare_hydra_argv

    prepare_hydra_argv("train", "python train.py")
    main()
