"""Dot-product against additive attention scores: the CPU preset trained for the same wall time
with each, then validation bits per byte, mean step time and both models' attention maps.

Extra arguments are hydra overrides for both models (e.g. recipe=baseline). --step-time only times
training steps of the preset's model, batch and dtype on random tokens, dot and additive alternating.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from bench.timing import REPO, header, machine, row, run_train, step_timer
from common.device import resolve_dtype
from common.settings import typed
from data.checkpoint import load_model
from heads.plots import DPI, MAX_TOKENS_SHOWN, layer_figure, token_texts
from heads.probes import Probe
from model import GPT
from model.config import ATTN_SCORES
from trainer.config import RunConfig
from trainer.optim import make_optimizers

TOKENS_PER_SECOND = re.compile(r"^step \d+/\d+ \| .* \| ([\d.]+)k tok/s \|", re.MULTILINE)


def step_time_table(steps: int, overrides: list[str]) -> None:
    """Each score's training step on train.py's preset=cpu config, timed `steps` times after a warm-up."""
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = typed(RunConfig, compose("train", overrides=["preset=cpu", *overrides]))
    device = torch.device("cpu")
    dtype = resolve_dtype(cfg.dtype, device)
    config = cfg.gpt_config(cfg.data.vocab_size)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, config.vocab_size, (2, cfg.train.batch_size, config.block_size), generator=generator)
    timers = {}
    for score in ATTN_SCORES:
        torch.manual_seed(cfg.seed)
        model = GPT(dataclasses.replace(config, attn_score=score))
        timers[score] = step_timer(model, model, make_optimizers(model, cfg.train, device), dtype, device, cfg.train)
    # dot and additive steps alternate, so that both see the same load; the first of each warms up
    rounds = [{score: step(x, y) for score, step in timers.items()} for _ in range(steps + 1)][1:]
    ms = {score: [times[score] * 1e3 for times in rounds] for score in ATTN_SCORES}
    print(f"training step time, {' '.join(['preset=cpu', *overrides])} ({str(dtype).removeprefix('torch.')}), "
          f"{machine()}, median of {steps} steps each, dot and additive steps alternating")
    header("attn_score", "ms per step", "min ms", "vs dot")
    for score, times in ms.items():
        median = np.median(times)
        row(score, f"{median:.0f}", f"{min(times):.0f}", f"{median / np.median(ms['dot']):.2f}x")


def attention_panel(model: GPT, tokenizer, probe: Probe, score: str) -> np.ndarray:
    """Every layer's heatmaps of the probe, drawn as the attention report draws them, one below the
    other: (height, width, RGB)."""
    ids = probe.ids(tokenizer, min(MAX_TOKENS_SHOWN, model.config.block_size))
    maps = model.attention_maps(torch.tensor([ids]))[:, 0].float().numpy()  # (L, H, T, T)
    labels = token_texts([tokenizer.decode_bytes([i]) for i in ids])
    layers = []
    for layer, weights in enumerate(maps):
        png = io.BytesIO()
        layer_figure(weights, labels, f"{score} · {probe.name} · layer {layer}").savefig(png, format="png", dpi=DPI)
        layers.append(np.asarray(Image.open(png).convert("RGB")))
    return np.vstack(layers)  # every layer's picture has the same size: the same heads and probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per model")
    parser.add_argument("--probe", default="en", help="name of the checkpoint's probe to draw (en, zh, pairs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--step-time", action="store_true", help="only time training steps, no training runs")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per score with --step-time")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for both runs, e.g. recipe=fast")
    args = parser.parse_args()
    if args.step_time:
        step_time_table(args.steps, args.overrides)
        return

    rows, panels = {}, []
    for score in ATTN_SCORES:
        out_dir = args.out / "runs" / f"attn-score-{score}"
        # train for the same wall time, evaluating only at the start and the end
        stdout, _ = run_train(score, ["preset=cpu", *args.overrides, f"model.attn_score={score}",
                                      "train.max_iters=1000000", f"train.max_seconds={args.minutes * 60}",
                                      "train.eval_interval=1000000", "wandb.mode=disabled"], out_dir)
        model, tokenizer, checkpoint = load_model(out_dir)
        tokens_per_step = checkpoint["config"]["train"]["batch_size"] * model.config.block_size
        step_ms = np.mean([tokens_per_step / float(k) for k in TOKENS_PER_SECOND.findall(stdout)])  # k tok/s
        rows[score] = checkpoint["step"], step_ms, checkpoint["val_metrics"]
        probes = {name: Probe(name, text) for name, text in checkpoint["probes"]}
        if args.probe not in probes:
            raise SystemExit(f"--probe {args.probe!r}: the checkpoint's probes are {', '.join(probes)}")
        panels.append(attention_panel(model, tokenizer, probes[args.probe], score))

    groups = [key.split("/")[1] for key in rows["dot"][2] if key.count("/") == 2 and key.endswith("/bpb")]
    print(f"dot vs additive attention scores: {' '.join(['preset=cpu', *args.overrides])}, {args.minutes:g} min of "
          f"training each, {machine()}")
    header("attn_score", "steps", "mean step ms", "val bpb all", *(f"val bpb {group}" for group in groups))
    for score, (steps, step_ms, metrics) in rows.items():
        bpb = [metrics[key] for key in ("val/bpb", *(f"val/{group}/bpb" for group in groups))]
        row(score, steps, f"{step_ms:.0f}", *(f"{value:.3f}" for value in bpb))
    (dot_steps, dot_ms, _), (additive_steps, additive_ms, _) = rows.values()
    print(f"additive: {additive_ms / dot_ms:.2f}x the dot-product step time, "
          f"{additive_steps / dot_steps:.2f}x the steps")
    path = args.out / "attention_scores.png"
    Image.fromarray(np.hstack(panels)).save(path)
    print(f"attention maps ({args.probe} probe, every layer, dot left, additive right): "
          f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
