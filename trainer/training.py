"""What one run trains with, built once (`Training.build`), and what it does besides taking
steps: save a checkpoint, evaluate and save, report the heads to wandb, print a progress line.

train.py's loop holds the order of things; everything it needs lives in one Training object, so
no function reads state that someone else assigns later.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from common.errors import ConfigError
from data.batches import TokenBins, TrainSampler
from data.gpt2 import check_vocab, load_gpt2, resolve_gpt2
from data.prepare import prepare
from heads.history import ReportHistory
from heads.probes import Probe, configured_probes
from model import GPT, GPTConfig
from trainer import distributed
from trainer.checkpoint import CHECKPOINT, LastSave, save_checkpoint
from trainer.config import RunConfig
from trainer.evaluate import evaluate
from trainer.mfu import flops_per_token, mfu, peak_flops
from trainer.nonfinite import NonFiniteGuard
from trainer.optim import make_optimizers
from trainer.resume import Resumed, resume
from trainer.runtime import rng_state, seed_everything
from trainer.schedule import decay_progress, learning_rate
from trainer.step import loss_scaler
from trainer.wandb_run import WandbRun, start_run

# the model settings a fine-tuned GPT-2 takes from the model group; the others come from its checkpoint
APPLIED = ("block_size", "dropout", "attn_impl")


def pretrained_model(cfg: RunConfig, verbose: bool) -> GPT:
    """init_from's GPT-2 (downloaded when a hub name) with the model group's block_size, dropout and
    attn_impl, its other settings taken from the checkpoint; its folder becomes data.tokenizer_kind,
    so the data is prepared (into a folder of its own) with the model's tokenizer."""
    if cfg.data.tokenizer_kind != "bpe":
        raise ConfigError(f"data.tokenizer_kind={cfg.data.tokenizer_kind} and init_from={cfg.init_from} both choose "
                          "the tokenizer: leave data.tokenizer_kind out, the model's own tokenizes the data")
    folder = resolve_gpt2(cfg.init_from)
    given = cfg.gpt_config()
    model, config = load_gpt2(folder, given.dropout, given.attn_impl, given.block_size)
    cfg.data.tokenizer_kind = str(folder)
    if verbose:
        taken = ", ".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                          for key, value in config.to_dict().items() if key not in (*APPLIED, "zero_init_proj"))
        print(f"init_from={cfg.init_from} ({folder}): from the checkpoint {taken}; of the model group only "
              + ", ".join(f"model.{key}={getattr(config, key)}" for key in APPLIED)
              + " apply; the data is tokenized with the model's tokenizer")
    return model


class RunData(NamedTuple):
    bins: TokenBins
    model_cfg: GPTConfig  # the model's settings, its vocabulary the tokenizer's
    probes: list[Probe]  # the attention report's fixed inputs


def prepared_data(cfg: RunConfig, ranks: distributed.Ranks, pretrained: GPT | None = None) -> RunData:
    """The data (prepared once per node), the model's settings and the report's probes, each checked
    against the data before out_dir is claimed: a block_size past a split or a probe of one token
    fails with nothing written and nothing trained."""
    if ranks.local_rank == 0:  # nodes need not share a file system
        prepare(cfg.data)
    distributed.wait_for_data(ranks)  # the other ranks wait for their node's bins
    bins = TokenBins(cfg.data.dir)
    if pretrained is None:
        model_cfg = cfg.gpt_config(bins.tokenizer.vocab_size)
    else:
        model_cfg = pretrained.config
        check_vocab(bins.tokenizer, model_cfg, Path(cfg.data.tokenizer_kind))
    bins.check_block_size(model_cfg.block_size)
    probes = configured_probes(cfg.wandb.probes, bins, cfg.wandb.probe_tokens)
    for probe in probes:
        probe.ids(bins.tokenizer, min(cfg.wandb.probe_tokens, model_cfg.block_size))  # a DataError below 2 tokens
    return RunData(bins, model_cfg, probes)


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass
class Training:
    cfg: RunConfig
    ranks: distributed.Ranks
    device: torch.device
    dtype: torch.dtype
    out_dir: Path
    saved: LastSave  # where the latest checkpoint is, for the line printed when the run is cut short
    bins: TokenBins
    model_cfg: GPTConfig
    probes: list[Probe]
    model: GPT  # owns the parameters
    step_model: torch.nn.Module  # runs the forward pass: the model, compiled or DDP-wrapped
    ddp: DistributedDataParallel | None
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    sampler: TrainSampler
    micro_batch: int  # what one forward pass of one rank sees
    run: WandbRun | None  # rank 0 only
    flops_per_step: float
    peak: float | None  # the device's peak FLOP/s, for MFU
    resumed: Resumed  # where out_dir's checkpoint left the run (step 0 for a fresh one)
    started: float = field(default_factory=time.time)  # wall clock of step 0 (earlier when resumed)
    best_val_loss: float = math.inf
    report_history: ReportHistory = field(default_factory=ReportHistory)  # a resumed run's goes on from its checkpoint
    painter: Any = None  # heads.painter.Painter, made at the first report (it imports matplotlib)

    @classmethod
    def build(cls, cfg: RunConfig, ranks: distributed.Ranks, device: torch.device, dtype: torch.dtype, out_dir: Path,
              saved: LastSave, data: RunData, pretrained: GPT | None = None) -> Training:
        """Build the model (or take `pretrained`, from pretrained_model), its optimizers and the batch
        sampler over `data` (prepared_data), continue out_dir's run if asked (trainer/resume.py), start
        the wandb run and print the model line."""
        bins, model_cfg, probes = data
        tc = cfg.train

        seed_everything(cfg.seed)  # the same initial weights on every rank (and dropout masks for a pretrained one)
        model = (GPT(model_cfg) if pretrained is None else pretrained.train()).to(device)  # load_gpt2's is in eval mode
        optimizers = make_optimizers(model, tc, device)
        step_model, ddp = distributed.wrap_model(model, cfg.compile, ranks, device)
        sampler = TrainSampler(bins.splits["train"], model_cfg.block_size, tc.batch_size, cfg.seed, ranks.rank,
                               ranks.world_size)
        # a checkpoint that cannot be continued fails here, before a wandb run is made
        resumed = resume(cfg, out_dir, device, model, model_cfg, optimizers, sampler, bins.tokenizer.hash, ranks)
        run = (start_run(cfg.wandb.mode, cfg.wandb.project, cfg.wandb.name, dataclasses.asdict(cfg), out_dir)
               if ranks.is_main else None)
        peak, peak_source = peak_flops(device, dtype) if ranks.is_main else (None, "")
        training = cls(cfg, ranks, device, dtype, out_dir, saved, bins, model_cfg, probes, model, step_model, ddp,
                       optimizers, loss_scaler(device, dtype), sampler,
                       micro_batch=tc.batch_size // (ranks.world_size * tc.grad_accum), run=run,
                       flops_per_step=flops_per_token(model) * tc.batch_size * model_cfg.block_size, peak=peak,
                       resumed=resumed, best_val_loss=resumed.best_val_loss,
                       report_history=ReportHistory(resumed.report_history))
        if ranks.is_main:
            print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers x {model_cfg.n_head} "
                  f"heads x {model_cfg.n_embd // model_cfg.n_head} dims, context {model_cfg.block_size}, "
                  f"attn_impl={model_cfg.attn_impl}, pos_encoding={model_cfg.pos_encoding} | {device}, "
                  f"{str(dtype).removeprefix('torch.')}, compile={cfg.compile}, {ranks.world_size} process(es), "
                  f"grad_accum {tc.grad_accum}" + (f" | peak {peak / 1e12:.2f} TFLOP/s ({peak_source})" if peak else ""))
        return training

    def save(self, step: int, metrics: dict, rngs: list[dict], best: bool = False) -> None:
        """Everything needed to continue exactly: weights, optimizer, step, every rank's RNG and the sampler state."""
        state = {
            "model": self.model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "step": step,
            "model_config": self.model_cfg.to_dict(),
            "config": dataclasses.asdict(self.cfg),
            "val_metrics": metrics,
            "best_val_loss": self.best_val_loss,
            "elapsed": time.time() - self.started,
            "tokenizer_hash": self.bins.tokenizer.hash,
            "probes": [[probe.name, probe.text] for probe in self.probes],
            "report_history": self.report_history.state(),
            "rng": rngs,  # one per rank, in rank order
            "sampler": self.sampler.generator.get_state(),
        }
        save_checkpoint(self.out_dir, state, self.bins.tokenizer, best)
        self.saved.step = step

    def evaluate_and_save(self, step: int, rngs: list[dict]) -> dict:
        """Val loss and bits per byte (all, en, zh, pairs), printed, saved (best.pt too when it is the
        lowest so far) and logged."""
        metrics = evaluate(self.model, self.bins, self.model_cfg.block_size, self.cfg.train.eval_windows,
                           self.micro_batch, self.device, self.dtype)
        groups = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if k.count("/") == 2 and k.endswith("bpb"))
        best = metrics["val/loss"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, metrics["val/loss"])
        print(f"eval step {step} ({time.time() - self.started:.1f}s): val loss {metrics['val/loss']:.4f} | bpb "
              f"{metrics['val/bpb']:.3f} ({groups})" + (" | new best" if best else ""))
        self.save(step, metrics, rngs, best)
        if self.run is not None:
            self.run.log(metrics, step=step)
        return metrics

    def report_heads(self, step: int, final: bool) -> None:
        """What every head does, to wandb: maps come from the explicit path, training is untouched.
        The head ablation runs in the final report, or in every one (wandb.ablation)."""
        if self.run is None or not self.run.active:
            return  # wandb failed earlier (warned once): nothing would receive the report
        from heads.painter import Painter
        from heads.report import (  # matplotlib: only runs that report pay for it
            build_report,
            log_report,
            print_top_heads,
            report_inputs,
        )

        started_report = time.time()
        wc = self.cfg.wandb
        ablate = wc.ablation == "every" or (wc.ablation == "final" and final)
        group_ids, ablation = report_inputs(self.model, self.bins, wc, self.device, self.dtype, ablate)
        ablation_seconds = time.time() - started_report  # the windows themselves take milliseconds
        title = f"{wc.project} · {self.out_dir.name} · step {step}"
        report = build_report(self.model, self.bins.tokenizer, self.probes, wc.probe_tokens, wc.table_rows,
                              group_ids, ablation, title, metric_maps=final)
        log_report(self.run, report, step, self.report_history)
        # on a CPU drawing stalls training for seconds a report, so by default only the final report
        # draws; the head view shows every report's maps
        pictures = wc.pictures if wc.pictures != "auto" else ("final" if self.device.type == "cpu" else "background")
        if self.painter is None:
            self.painter = Painter(background=pictures == "background")
        if final or pictures != "final":
            self.painter.submit(step, report.pictures, spread=final)
            self.log_pictures(step, wait=final)
            where = " (pictures drawn in the background)" if self.painter.pool is not None and not final else ""
        else:
            where = f" (no pictures until the final report: wandb.pictures={wc.pictures})"
        print(f"attention report at step {step} in {time.time() - started_report:.1f}s"
              + (f" (head ablation {ablation_seconds:.1f}s of it)" if ablation else "") + where)
        print_top_heads(report)

    def log_pictures(self, step: int, wait: bool = False) -> None:
        """Log at `step` the pictures of the oldest report whose pictures are drawn. One report's per
        step: a second one's at the same step would replace it in wandb. With wait (the final report)
        every report's are waited for and the last one's logged; older ones that could not be logged
        before it are skipped, said in one line."""
        from heads.report import log_pictures

        ready = self.painter.ready(wait, limit=None if wait else 1)
        for report_step, files in ready:
            if isinstance(files, BaseException):
                why = (f"{files.strerror} in {self.painter.folder}" if isinstance(files, OSError)  # a full TMPDIR
                       else f"{type(files).__name__}: {files}")
                print(f"warning: the attention pictures of step {report_step} could not be drawn ({why})"
                      + ("; the report's numbers and head view were logged" if self.run.active else ""),
                      file=sys.stderr, flush=True)
            elif report_step != ready[-1][0]:
                print(f"note: the attention pictures of step {report_step} were still being drawn when the final "
                      f"report's were logged, so they are not in wandb (reports closer than drawing takes)")
            else:
                log_pictures(self.run, files, step, report_step)
            self.painter.release(report_step)

    def log_progress(self, step: int, step_loss: torch.Tensor, lr: float, seconds_per_step: float,
                     guard: NonFiniteGuard) -> None:
        """The progress line of `step` (1-based) and its wandb entry: loss (averaged over the ranks),
        learning rate, throughput, MFU, elapsed time and ETA (the nearer of the step and time budgets)."""
        tc = self.cfg.train
        loss_value = distributed.mean_across_ranks(step_loss, self.ranks)
        tokens_per_second = tc.batch_size * self.model_cfg.block_size / seconds_per_step
        flops_per_second = self.flops_per_step / seconds_per_step
        elapsed = time.time() - self.started
        eta = elapsed / step * (tc.max_iters - step)
        if tc.max_seconds:
            eta = min(eta, max(0.0, tc.max_seconds - elapsed))
        utilisation = mfu(flops_per_second, self.peak, self.ranks.world_size) if self.peak else None
        if self.ranks.is_main:
            mfu_text = f", MFU {100 * utilisation:.1f}%" if self.peak else ""
            print(f"step {step}/{tc.max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | "
                  f"{tokens_per_second / 1e3:.1f}k tok/s | {flops_per_second / 1e9:.1f} GFLOP/s{mfu_text} | "
                  f"{format_seconds(elapsed)} elapsed | ETA {format_seconds(eta)}"
                  + (f" | {guard.skipped} non-finite steps skipped" if guard.skipped else ""))
        if self.painter is not None:
            self.log_pictures(step)
        if self.run is not None:
            entry = {"train/loss": loss_value, "train/lr": lr, "train/tokens_per_second": tokens_per_second,
                     "train/flops_per_second": flops_per_second, "train/skipped_steps": guard.skipped}
            if self.peak:
                entry["train/mfu"] = utilisation
            self.run.log(entry, step=step)

    def time_is_up(self) -> bool:
        """Whether the time budget (train.max_seconds) is spent, on any rank."""
        seconds = self.cfg.train.max_seconds
        return bool(seconds) and distributed.any_rank(time.time() - self.started >= seconds, self.ranks)

    def set_learning_rate(self, step: int) -> float:
        """Warmup, then cosine decay over whichever budget (steps or seconds) is further along."""
        tc = self.cfg.train
        progress = decay_progress(step, tc.warmup_iters, tc.lr_decay_iters, time.time() - self.started, tc.max_seconds)
        lr = learning_rate(step, tc.learning_rate, tc.min_lr, tc.warmup_iters, progress)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def evaluate_and_report(self, step: int, evaluate_now: bool, report_now: bool, final: bool) -> dict | None:
        """At a report step: rank 0 reports the heads; at an evaluation step: every rank's random
        state to rank 0, which evaluates and saves (the report first, so the checkpoint's report
        history holds this step's). The other ranks wait. Returns the metrics (rank 0, when it evaluated)."""
        metrics = None
        if self.ranks.is_main and report_now:
            self.report_heads(step, final)
        if evaluate_now:
            rngs = distributed.gather_to_main(rng_state(self.device), self.ranks)
            if self.ranks.is_main:
                metrics = self.evaluate_and_save(step, rngs)
        if evaluate_now or report_now:
            distributed.barrier(self.ranks)
        return metrics

    def save_interrupted(self, step: int, metrics: dict) -> None:
        """After a Ctrl-C or SIGTERM: save where the run stopped and say how to continue."""
        rngs = distributed.gather_to_main(rng_state(self.device), self.ranks)
        if self.ranks.is_main:
            self.save(step, metrics, rngs)
            print(f"interrupted after step {step}: checkpoint in {self.out_dir / CHECKPOINT}; "
                  f"run the same command again to continue (train.resume=auto)")

    def finish(self, last_step: int, metrics: dict, completed: bool, failed: bool) -> None:
        """The done line (what the run reached and which budget ended it), then the wandb run's summary."""
        tc = self.cfg.train
        if self.ranks.is_main and completed:
            budget = (f"the time budget train.max_seconds={tc.max_seconds:g} ran out first" if last_step < tc.max_iters
                      else f"train.max_iters={tc.max_iters}")
            reached = f", val bpb {metrics['val/bpb']:.3f}" if "val/bpb" in metrics else ""
            print(f"done in {format_seconds(time.time() - self.started)} at step {last_step} ({budget}){reached}: "
                  f"checkpoint in {self.out_dir / CHECKPOINT}")
        if self.painter is not None:
            self.painter.close()  # an interrupted run's pictures still being drawn are dropped
        if self.run is not None:
            self.run.summary(metrics)
            where = self.run.finish(exit_code=1 if failed else 0)
            if where:
                print(where)
