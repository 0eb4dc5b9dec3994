"""Train the GPT: prepare the data if needed, then AdamW with warmup + cosine decay, periodic
validation in bits per byte (overall, en, zh, pairs), checkpoints and a wandb run.

    python train.py                  # GPU default (6 layers, 6 heads, 384 dims, context 256)
    python train.py preset=cpu       # sized for a 2-core CPU
    python train.py model.n_layer=8 train.max_iters=2000 wandb.mode=disabled
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from data.batches import TokenBins, TrainSampler
from data.prepare import DataConfig, prepare
from data.sources import DataError
from data.tokenizer import TokenizerError
from heads.probes import configured_probes
from heads.report import build_report, log_report, print_top_heads
from model import GPT, GPTConfig
from trainer.checkpoint import CheckpointError, save_checkpoint
from trainer.evaluate import evaluate
from trainer.runtime import ConfigError, autocast, resolve_device, resolve_dtype, seed_everything, to_device
from trainer.schedule import learning_rate
from trainer.wandb_run import start_run


def make_optimizer(model: GPT, tc: DictConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def train(cfg: DictConfig) -> dict:
    tc = cfg.train
    for key in ("batch_size", "max_iters", "eval_interval", "eval_windows", "log_interval"):
        if not isinstance(tc[key], int) or tc[key] < 1:
            raise ConfigError(f"train.{key}={tc[key]!r} must be a positive integer")
    for key in ("attn_every", "probe_tokens", "table_rows"):
        if not isinstance(cfg.wandb[key], int) or cfg.wandb[key] < (0 if key == "attn_every" else 2):
            raise ConfigError(f"wandb.{key}={cfg.wandb[key]!r} must be an integer >= {0 if key == 'attn_every' else 2}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)

    data_cfg = DataConfig(**OmegaConf.to_container(cfg.data, resolve=True))
    prepare(data_cfg)
    bins = TokenBins(data_cfg.dir)
    try:
        model_cfg = GPTConfig(vocab_size=bins.tokenizer.vocab_size, **OmegaConf.to_container(cfg.model, resolve=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    bins.check_block_size(model_cfg.block_size)
    probes = configured_probes(cfg.wandb.probes, bins, cfg.wandb.probe_tokens)

    seed_everything(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, tc, device)
    sampler = TrainSampler(bins.splits["train"], model_cfg.block_size, tc.batch_size, cfg.seed)
    out_dir = Path(cfg.out_dir)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run = start_run(cfg.wandb.mode, cfg.wandb.project, cfg.wandb.name, run_config, out_dir)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers x {model_cfg.n_head} heads "
          f"x {model_cfg.n_embd // model_cfg.n_head} dims, context {model_cfg.block_size}, attn_impl={model_cfg.attn_impl}"
          f" | device {device}, {str(dtype).removeprefix('torch.')}")

    def evaluate_and_save(step: int) -> dict:
        metrics = evaluate(model, bins, model_cfg.block_size, tc.eval_windows, tc.batch_size, device, dtype)
        groups = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if k.count("/") == 2 and k.endswith("bpb"))
        print(f"eval step {step}: val loss {metrics['val/loss']:.4f} | bpb {metrics['val/bpb']:.3f} ({groups})")
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "model_config": model_cfg.to_dict(),
            "config": run_config,
            "val_metrics": metrics,
            "tokenizer_hash": bins.tokenizer.hash,
            "probes": [[probe.name, probe.text] for probe in probes],
        }
        save_checkpoint(out_dir, state, bins.tokenizer)
        if run is not None:
            run.log(metrics, step=step)
        return metrics

    def report_heads(step: int) -> None:
        """What every head does, to wandb: maps come from the explicit path, training is untouched."""
        started_report = time.time()
        report = build_report(model, bins.tokenizer, probes, cfg.wandb.probe_tokens, cfg.wandb.table_rows)
        log_report(run, report, step)
        print(f"attention report at step {step} in {time.time() - started_report:.1f}s")
        print_top_heads(report)

    attn_every = cfg.wandb.attn_every if run is not None else 0  # wandb.mode=disabled computes nothing
    tokens_per_step = tc.batch_size * model_cfg.block_size
    started = last_log = time.time()
    metrics: dict = {}
    for step in range(tc.max_iters + 1):
        if step % tc.eval_interval == 0 or step == tc.max_iters:
            metrics = evaluate_and_save(step)
            last_log = time.time()  # do not count evaluation time as training throughput
        if attn_every and step > 0 and (step % attn_every == 0 or step == tc.max_iters):
            report_heads(step)
            last_log = time.time()
        if step == tc.max_iters:
            break
        lr = learning_rate(step, tc.learning_rate, tc.min_lr, tc.warmup_iters, tc.lr_decay_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr

        x, y = sampler.next_batch()
        with autocast(device, dtype):
            _, loss = model(to_device(x, device), to_device(y, device))
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if (step + 1) % tc.log_interval == 0:
            loss_value = loss.item()  # the only host sync of a step, once per log interval
            if not math.isfinite(loss_value):
                raise RuntimeError(f"training loss became {loss_value} at step {step + 1}: lower train.learning_rate")
            now = time.time()
            tokens_per_second = tc.log_interval * tokens_per_step / max(now - last_log, 1e-9)
            elapsed = now - started
            eta = elapsed / (step + 1) * (tc.max_iters - step - 1)
            print(f"step {step + 1}/{tc.max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | "
                  f"{tokens_per_second / 1e3:.1f}k tok/s | {format_seconds(elapsed)} elapsed | ETA {format_seconds(eta)}")
            if run is not None:
                run.log({"train/loss": loss_value, "train/lr": lr, "train/tokens_per_second": tokens_per_second}, step=step + 1)
            last_log = now

    print(f"done in {format_seconds(time.time() - started)}: checkpoint in {out_dir / 'ckpt.pt'}")
    if run is not None:
        run.summary.update(metrics)
        run_dir = Path(run.dir).parent
        offline = run.settings.mode == "offline"
        run.finish()
        print(f"wandb: run in {run_dir}" + (f" (offline: upload with `wandb sync {run_dir}`)" if offline else ""))
    return metrics


@hydra.main(config_path="config", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (ConfigError, DataError, TokenizerError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
