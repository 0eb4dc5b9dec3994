"""Train the GPT: prepare the data if needed, then AdamW (or Muon) with warmup + cosine decay,
periodic validation in bits per byte (overall, en, zh, pairs), checkpoints, a wandb run and an
attention report of every head.

    python train.py                  # GPU default (6 layers, 6 heads, 384 dims, context 256)
    python train.py preset=cpu       # sized for a 2-core CPU
    python train.py model.n_layer=8 train.max_iters=2000 wandb.mode=disabled
    python train.py init_from=gpt2 model.block_size=256   # fine-tune GPT-2 (or init_from=/path/to/hf-folder)
    torchrun --standalone --nproc_per_node=8 train.py     # data parallel on 8 GPUs

Read it top to bottom: the set-up, one optimizer step, then the loop. A first reading can skip what
guards the run (out_dir, resuming, non-finite steps, Ctrl-C: trainer/guards.py) and common/wandb_run.py.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from functools import partial
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from common.cli import run_entry
from common.device import autocast, resolve_device, resolve_dtype, to_device
from common.errors import ConfigError
from common.settings import typed
from common.sweeps import separate_sweep_jobs
from common.wandb_run import start_run
from data.batches import TokenBins, TrainSampler, evaluate
from data.checkpoint import CHECKPOINT, save_checkpoint
from data.gpt2 import SCRATCH, check_vocab, load_gpt2, resolve_gpt2
from data.prepare import prepare
from heads.metrics import ReportHistory
from heads.probes import configured_probes
from model import GPT
from trainer import distributed, guards
from trainer.config import RunConfig, TrainConfig
from trainer.cuda_graph import GraphedTrainStep
from trainer.mfu import flops_per_token, mfu, peak_flops
from trainer.optim import make_optimizers
from trainer.runtime import reuse_host_memory, rng_state, seed_everything

# the model settings a fine-tuned GPT-2 takes from the model group; the others come from its checkpoint
APPLIED = ("block_size", "dropout", "attn_impl", "attn_tile")


def pretrained_model(cfg: RunConfig, verbose: bool) -> GPT:
    """init_from's GPT-2 (downloaded when a hub name) with the model group's APPLIED settings; its folder
    becomes data.tokenizer_kind, so the data is tokenized by its tokenizer."""
    if cfg.data.tokenizer_kind != "bpe":
        raise ConfigError(f"data.tokenizer_kind={cfg.data.tokenizer_kind} and init_from={cfg.init_from} both choose "
                          "the tokenizer: leave data.tokenizer_kind out, the model's own tokenizes the data")
    folder = resolve_gpt2(cfg.init_from)
    given = cfg.gpt_config()
    model, config = load_gpt2(folder, **{key: getattr(given, key) for key in APPLIED})
    cfg.data.tokenizer_kind = str(folder)
    if verbose:
        taken = ", ".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                          for key, value in config.to_dict().items() if key not in (*APPLIED, "zero_init_proj"))
        print(f"init_from={cfg.init_from} ({folder}): from the checkpoint {taken}; of the model group only "
              + ", ".join(f"model.{key}={getattr(config, key)}" for key in APPLIED)
              + " apply; the data is tokenized with the model's tokenizer")
    return model


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def get_lr(step: int, tc: TrainConfig, seconds: float) -> float:
    """Linear warmup, then cosine decay to min_lr. The decay follows whichever budget is further
    along: the steps (train.lr_decay_iters) or, with train.max_seconds, the time `seconds` spent,
    so a run on a slow machine still ends its decay when its time runs out."""
    if step < tc.warmup_iters:
        return tc.learning_rate * (step + 1) / tc.warmup_iters
    progress = (step - tc.warmup_iters) / max(1, tc.lr_decay_iters - tc.warmup_iters)
    if tc.max_seconds:
        progress = max(progress, seconds / tc.max_seconds)
    progress = min(max(progress, 0.0), 1.0)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


# ---------------------------------------------------------------------------------------------
# one optimizer step (bench/ times this very function)

def loss_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """fp16 needs its loss scaled, or small gradients underflow; bf16 and fp32 do not: disabled."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def train_step(model: GPT, step_model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, tc: TrainConfig,
               dtype: torch.dtype, ddp: torch.nn.parallel.DistributedDataParallel | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's batch x, y (B, T); step_model is the model compiled or DDP-wrapped.
    Returns the mean loss, the gradient norm and whether the step counts as non-finite, all on the
    device: nothing here waits for the device to finish (the loop reads them at log time)."""
    device = model.lm_head.weight.device
    step_loss = torch.zeros((), device=device)
    for micro, (micro_x, micro_y) in enumerate(zip(x.chunk(tc.grad_accum), y.chunk(tc.grad_accum))):
        if ddp is not None:  # average the gradients across ranks once, after the last micro-batch
            ddp.require_backward_grad_sync = micro == tc.grad_accum - 1
        with autocast(device, dtype):
            _, loss = step_model(to_device(micro_x, device), to_device(micro_y, device))
        loss = loss / tc.grad_accum
        scaler.scale(loss).backward()  # fp16 scales the loss so small gradients do not underflow
        step_loss += loss.detach()
    for optimizer in optimizers:
        scaler.unscale_(optimizer)  # true gradients (a no-op unless fp16 scales the loss)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # NaN or inf when the loss or any gradient is
    nonfinite = ~torch.isfinite(grad_norm)
    counted = guards.unrecoverable(step_loss, nonfinite, scaler)
    if tc.grad_clip > 0:  # scale every gradient by min(1, grad_clip / grad_norm)
        torch.nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm)
    guards.step_unless(nonfinite, optimizers, scaler)  # a NaN or inf never reaches the weights
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return step_loss, grad_norm, counted


# ---------------------------------------------------------------------------------------------
# the run

def train(cfg: RunConfig, ranks: distributed.Ranks, device_name: str, saved: guards.LastSave) -> dict:
    """Set up device, data and model settings (every check before out_dir is claimed, so a bad one writes
    nothing), then fit while holding out_dir."""
    tc = cfg.train
    if tc.batch_size % (ranks.world_size * tc.grad_accum):
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by processes x train.grad_accum = "
                          f"{ranks.world_size} x {tc.grad_accum}: it is the global batch of one optimizer step")
    device = resolve_device(device_name)
    dtype = resolve_dtype(cfg.dtype, device)
    cfg.records_cuda_graph(device.type, ranks.world_size, dtype)  # cuda_graph=true where it cannot be: one line
    if device.type == "cpu":
        reuse_host_memory()  # each step reuses the pages of the last one instead of faulting in new ones
    pretrained = pretrained_model(cfg, ranks.is_main) if cfg.init_from != SCRATCH else None
    if ranks.local_rank == 0:  # nodes need not share a file system
        prepare(cfg.data)
    distributed.barrier(ranks)  # the other ranks wait for their node's bins
    bins = TokenBins(cfg.data.dir)
    if pretrained is None:
        model_cfg = cfg.gpt_config(bins.tokenizer.vocab_size)  # the vocabulary is the tokenizer's
    else:
        model_cfg = pretrained.config
        check_vocab(bins.tokenizer, model_cfg, Path(cfg.data.tokenizer_kind))
    bins.check_block_size(model_cfg.block_size)
    probes = configured_probes(cfg.wandb.probes, bins, cfg.wandb.probe_tokens)  # the attention report's inputs
    for probe in probes:
        probe.ids(bins.tokenizer, min(cfg.wandb.probe_tokens, model_cfg.block_size))  # a DataError below 2 tokens
    out_dir = Path(cfg.out_dir)
    with guards.claim_out_dir(cfg, out_dir, ranks):
        return fit(cfg, ranks, device, dtype, out_dir, saved, bins, model_cfg, probes, pretrained)


def fit(cfg: RunConfig, ranks: distributed.Ranks, device: torch.device, dtype: torch.dtype, out_dir: Path,
        saved: guards.LastSave, bins: TokenBins, model_cfg, probes: list, pretrained: GPT | None) -> dict:
    """Build the model, optimizers and sampler (continuing out_dir's run if asked), then train until the
    step or time budget ends, a stop signal comes (saving) or too many steps in a row are non-finite."""
    tc, wc = cfg.train, cfg.wandb

    # ---- model, optimizers, batches
    seed_everything(cfg.seed)  # the same initial weights on every rank (and dropout masks for a pretrained one)
    model = (GPT(model_cfg) if pretrained is None else pretrained.train()).to(device)  # load_gpt2's is in eval mode
    optimizers = make_optimizers(model, tc, device)
    scaler = loss_scaler(device, dtype)
    compiled = cfg.compiles(device.type)
    step_model, ddp = distributed.wrap_model(model, compiled, ranks, device)
    run_step = partial(train_step, model, step_model, optimizers, scaler, tc=tc, dtype=dtype, ddp=ddp)
    graphed = cfg.records_cuda_graph(device.type, ranks.world_size, dtype)
    if graphed:  # replayed as one CUDA graph: the same step, launched at once (trainer/cuda_graph.py)
        run_step = GraphedTrainStep(run_step, optimizers, device)
    sampler = TrainSampler(bins.splits["train"], model_cfg.block_size, tc.batch_size, cfg.seed, ranks.rank,
                           ranks.world_size)
    micro_batch = tc.batch_size // (ranks.world_size * tc.grad_accum)  # what one forward pass of one rank sees

    # ---- resume, then the wandb run (a checkpoint that cannot be continued leaves no empty run)
    resumed = guards.resume(cfg, out_dir, device, model, model_cfg, optimizers, sampler, bins.tokenizer.hash, ranks)
    history = ReportHistory(resumed.report_history)  # the attention charts so far
    run = (start_run(wc.mode, wc.project, wc.name, dataclasses.asdict(cfg), out_dir) if ranks.is_main else None)
    attn_every = wc.attn_every if wc.mode != "disabled" else 0  # disabled computes nothing
    reports = None  # rank 0's
    if run is not None and attn_every:
        from heads.report import TrainingReports  # matplotlib: only runs that report pay for it

        reports = TrainingReports(run, model, bins, probes, wc, device, dtype, f"{wc.project} · {out_dir.name}",
                                  history)
    flops_per_step = flops_per_token(model) * tc.batch_size * model_cfg.block_size
    peak, peak_source = peak_flops(device, dtype) if ranks.is_main else (None, "")
    if ranks.is_main:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers x {model_cfg.n_head} "
              f"heads x {model_cfg.n_embd // model_cfg.n_head} dims, context {model_cfg.block_size}, "
              f"attn_impl={model_cfg.attn_impl}, pos_encoding={model_cfg.pos_encoding} | {device}, "
              f"{str(dtype).removeprefix('torch.')}, compile={str(compiled).lower()}, "
              f"cuda_graph={str(graphed).lower()}, {ranks.world_size} process(es), grad_accum {tc.grad_accum}"
              + (f" | peak {peak / 1e12:.2f} TFLOP/s ({peak_source})" if peak else ""))

    started = time.time() - resumed.elapsed  # wall clock of step 0: a resumed time budget goes on where it stopped
    best_val_loss = resumed.best_val_loss

    def save(step: int, metrics: dict, rngs: list[dict], best: bool = False) -> None:
        # everything needed to continue exactly: weights, optimizers, step, every rank's RNG, the sampler
        state = {"model": model.state_dict(), "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                 "step": step, "model_config": model_cfg.to_dict(), "config": dataclasses.asdict(cfg),
                 "val_metrics": metrics, "best_val_loss": best_val_loss, "elapsed": time.time() - started,
                 "tokenizer_hash": bins.tokenizer.hash, "probes": [[probe.name, probe.text] for probe in probes],
                 "report_history": history.state(), "rng": rngs,  # one per rank, in rank order
                 "sampler": sampler.generator.get_state()}
        save_checkpoint(out_dir, state, bins.tokenizer, best)
        saved.step = step

    # ---- the loop
    start_step = resumed.step
    if start_step:
        saved.step = start_step  # ckpt.pt already holds it
    guard = guards.NonFiniteGuard(tc.max_nonfinite, verbose=ranks.is_main)
    sync_every_step = not guards.skips_on_device(optimizers)  # unfused AdamW (MPS) steps after a host sync
    stop = guards.GracefulStop()  # Ctrl-C, SIGTERM, SIGHUP: finish the step, save, exit 0
    last_log = time.time()
    metrics: dict = {}
    last_step, interrupted = tc.max_iters, False
    try:
        for step in range(start_step, tc.max_iters + 1):
            if (last_step == tc.max_iters and tc.max_seconds
                    and distributed.any_rank(time.time() - started >= tc.max_seconds, ranks)):
                last_step = step  # the time budget is spent: evaluate, save and stop here
            fresh = step > start_step or start_step == 0  # a resumed step was evaluated before it was saved
            evaluate_now = fresh and (step % tc.eval_interval == 0 or step == last_step)
            report_now = fresh and attn_every > 0 and (step % attn_every == 0 or step == last_step)  # step 0 too
            if report_now and reports is not None:  # before the save: the checkpoint's report history holds it
                reports.report(step, final=step == last_step)
            elif reports is not None and step % tc.log_interval == 0:
                # pictures drawn since, at the step of the progress line just printed: here, where it is known
                # that no report (not even the time budget's final one) takes this step with pictures of its own
                reports.log_pictures(step)
            if evaluate_now:
                rngs = distributed.gather_to_main(rng_state(device), ranks)  # every rank's, to rank 0
                if ranks.is_main:
                    metrics = evaluate(model, bins, model_cfg.block_size, tc.eval_windows, micro_batch, device, dtype)
                    groups = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items()
                                      if k.count("/") == 2 and k.endswith("bpb"))
                    best = metrics["val/loss"] < best_val_loss
                    best_val_loss = min(best_val_loss, metrics["val/loss"])
                    print(f"eval step {step} ({time.time() - started:.1f}s): val loss {metrics['val/loss']:.4f} | bpb "
                          f"{metrics['val/bpb']:.3f} ({groups})" + (" | new best" if best else ""))
                    save(step, metrics, rngs, best)
                    if run is not None:
                        run.log(metrics, step=step)
            if evaluate_now or report_now:
                distributed.barrier(ranks)  # the other ranks wait for rank 0
                last_log = time.time()  # evaluation and reports do not count as training throughput
            if step == last_step:
                break

            lr = get_lr(step, tc, time.time() - started)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

            x, y = sampler.next_batch()  # this rank's share of the global batch
            step_started = time.time()
            step_loss, grad_norm, counted = run_step(x, y)
            if compiled and step == start_step and ranks.is_main:  # the compiler works on the host, in the first call
                print(f"compiled the training step in {time.time() - step_started:.0f}s")
            guard.check(step + 1, grad_norm, counted)

            if (step + 1) % tc.log_interval == 0:  # the only host sync of the loop
                guard.read()
                now = time.time()
                seconds_per_step = max(now - last_log, 1e-9) / tc.log_interval
                last_log = now
                loss = distributed.mean_across_ranks(step_loss, ranks)
                tokens_per_second = tc.batch_size * model_cfg.block_size / seconds_per_step
                flops_per_second = flops_per_step / seconds_per_step
                elapsed = now - started
                eta = elapsed / (step + 1) * (tc.max_iters - step - 1)
                if tc.max_seconds:
                    eta = min(eta, max(0.0, tc.max_seconds - elapsed))
                utilisation = mfu(flops_per_second, peak, ranks.world_size) if peak else None
                if ranks.is_main:
                    print(f"step {step + 1}/{tc.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                          f"{tokens_per_second / 1e3:.1f}k tok/s | {flops_per_second / 1e9:.1f} GFLOP/s"
                          + (f", MFU {100 * utilisation:.1f}%" if peak else "")
                          + f" | {format_seconds(elapsed)} elapsed | ETA {format_seconds(eta)}"
                          + (f" | {guard.skipped} non-finite steps skipped" if guard.skipped else ""))
                if run is not None:
                    entry = {"train/loss": loss, "train/lr": lr, "train/tokens_per_second": tokens_per_second,
                             "train/flops_per_second": flops_per_second, "train/skipped_steps": guard.skipped}
                    if peak:
                        entry["train/mfu"] = utilisation
                    run.log(entry, step=step + 1)
            elif sync_every_step:
                guard.read()
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

    # ---- finish: the done line (also when Ctrl-C came during the final evaluation), the wandb summary
    guard.read()
    failure = guard.failure()
    if reports is not None:  # the final report's pictures, drawn while the final evaluation and save ran
        reports.close(final_step=None if interrupted or failure else last_step)
    if ranks.is_main and not interrupted and not failure:
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


# ---------------------------------------------------------------------------------------------
# the command line

@hydra.main(config_path="config", config_name="train", version_base=None)
def main(raw: DictConfig) -> None:
    ranks, device_name = distributed.setup(str(raw.device))
    saved = guards.LastSave(Path("."))

    def job() -> None:
        separate_sweep_jobs(raw)
        cfg = typed(RunConfig, raw, "")  # every setting checked before anything is read or written
        saved.out_dir = Path(cfg.out_dir)
        try:
            train(cfg, ranks, device_name, saved)
        except guards.NonFiniteError as e:
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
