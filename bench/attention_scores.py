"""Dot-product against additive attention scores: the CPU preset trained for the same wall time
with each, then validation bits per byte, mean step time and both models' attention maps.

    python bench/attention_scores.py [--minutes 5] [--probe en] [--out bench/results] [hydra overrides ...]
    python bench/attention_scores.py --step-time [--steps 10] [hydra overrides ...]

--step-time only times training steps (forward, backward, clip, optimizer) of the preset's model,
batch and dtype on random tokens, alternating dot and additive steps so both see the same load.

Otherwise it runs the real train.py twice from scratch (preset=cpu with model.attn_score=dot,
then additive; extra arguments, e.g. recipe=baseline, go to both) with train.max_seconds, evaluating
only at the start and the end. Prints a table of the final val bits per byte (all and per group,
from the checkpoint's val_metrics), the steps done and the mean training step time (from the
k tok/s of the training log, evaluation excluded), and saves every layer's attention maps of one
probe, dot on the left, additive on the right, to <out>/attention_scores.png.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from bench.timing import TimedSteps  # noqa: E402
from heads.labels import token_texts  # noqa: E402
from heads.painter import paint  # noqa: E402
from heads.plots import layer_figure  # noqa: E402
from heads.probes import Probe  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from data.checkpoint import load_model  # noqa: E402
from trainer.optim import make_optimizers  # noqa: E402
from common.device import resolve_dtype  # noqa: E402

SCORES = ("dot", "additive")
TOKENS_PER_SECOND = re.compile(r"^step \d+/\d+ \| .* \| ([\d.]+)k tok/s \|", re.MULTILINE)


def step_times(steps: int, overrides: list[str]) -> tuple[dict[str, list[float]], str]:
    """Seconds of each training step of train.py's preset=cpu config, per score, and the dtype used."""
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose("train", overrides=["preset=cpu", *overrides])
    device = torch.device("cpu")
    dtype = resolve_dtype(cfg.dtype, device)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, cfg.data.vocab_size, (2, cfg.train.batch_size, cfg.model.block_size), generator=generator)
    setups = {}
    for score in SCORES:
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(vocab_size=cfg.data.vocab_size, **{**OmegaConf.to_container(cfg.model), "attn_score": score}))
        setups[score] = TimedSteps(model, model, make_optimizers(model, cfg.train, device), dtype, device,
                                   cfg.train)
    times: dict[str, list[float]] = {score: [] for score in SCORES}
    for i in range(steps + 1):  # the first step of each warms up
        for score, timed_step in setups.items():
            seconds = timed_step(x, y)
            if i:
                times[score].append(seconds)
    return times, str(dtype).removeprefix("torch.")


def train_for(score: str, minutes: float, out_dir: Path, extra: list[str]) -> list[float]:
    """Train one model for `minutes`; return the thousands of tokens per second of each log line."""
    cmd = [sys.executable, str(REPO / "train.py"), "preset=cpu", *extra, f"model.attn_score={score}",
           "train.max_iters=1000000", f"train.max_seconds={minutes * 60}", "train.eval_interval=1000000",
           "train.resume=false", "wandb.mode=disabled", f"out_dir={out_dir}"]
    print(f"running {score}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{score} failed:\n{result.stderr[-2000:]}")
    return [float(k) for k in TOKENS_PER_SECOND.findall(result.stdout)]


def attention_panel(model, tokenizer, probe: Probe, max_tokens: int, score: str) -> list[Image.Image]:
    """One image per layer: every head's weights on the probe, drawn by the attention report's code."""
    ids = probe.ids(tokenizer, min(max_tokens, model.config.block_size))
    maps = model.attention_maps(torch.tensor([ids]))[:, 0].float().numpy()  # (L, H, T, T)
    labels = token_texts([tokenizer.decode_bytes([i]) for i in ids])
    with tempfile.TemporaryDirectory() as folder:
        files = paint({f"L{layer}": partial(layer_figure, maps[layer], labels, f"{score} · {probe.name} · layer {layer}")
                       for layer in range(maps.shape[0])}, Path(folder))
        return [Image.open(path).copy() for path in files.values()]


def side_by_side(columns: list[list[Image.Image]]) -> Image.Image:
    """Images in a grid: one column per list, one row per layer."""
    width = max(image.width for column in columns for image in column)
    heights = [max(column[row].height for column in columns) for row in range(len(columns[0]))]
    grid = Image.new("RGB", (width * len(columns), sum(heights)), "white")
    for x, column in enumerate(columns):
        for y, image in enumerate(column):
            grid.paste(image, (x * width, sum(heights[:y])))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per model")
    parser.add_argument("--probe", default="en", help="name of the checkpoint's probe to draw (en, zh, pairs)")
    parser.add_argument("--probe-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--step-time", action="store_true", help="only time training steps, no training runs")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per score with --step-time")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for both runs, e.g. recipe=fast")
    args = parser.parse_args()
    setting = f"preset=cpu {' '.join(args.overrides)}".rstrip()
    if args.step_time:
        times, dtype = step_times(args.steps, args.overrides)
        median_ms = {score: float(np.median(t)) * 1e3 for score, t in times.items()}
        print(f"training step time, {setting} ({dtype}), {platform.machine()} CPU, {torch.get_num_threads()} threads, "
              f"median of {args.steps} steps each, dot and additive steps alternating")
        print("| attn_score | ms per step | min ms | vs dot |\n|---|---|---|---|")
        for score, t in times.items():
            print(f"| {score} | {median_ms[score]:.0f} | {min(t) * 1e3:.0f} | {median_ms[score] / median_ms['dot']:.2f}x |")
        return

    rows, panels = [], []
    for score in SCORES:
        out_dir = args.out / "runs" / f"attn-score-{score}"
        thousands_per_second = train_for(score, args.minutes, out_dir, args.overrides)
        model, tokenizer, checkpoint = load_model(out_dir)
        tokens_per_step = checkpoint["config"]["train"]["batch_size"] * model.config.block_size
        step_ms = np.mean([tokens_per_step / (k * 1e3) for k in thousands_per_second]) * 1e3
        rows.append((score, checkpoint["step"], step_ms, checkpoint["val_metrics"]))
        probes = {name: Probe(name, text) for name, text in checkpoint["probes"]}
        if args.probe not in probes:
            raise SystemExit(f"--probe {args.probe!r}: the checkpoint's probes are {', '.join(probes)}")
        panels.append(attention_panel(model, tokenizer, probes[args.probe], args.probe_tokens, score))

    groups = [key.split("/")[1] for key in rows[0][3] if key.count("/") == 2 and key.endswith("/bpb")]
    print(f"dot vs additive attention scores: {setting}, {args.minutes:g} min of training each, "
          f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print("| attn_score | steps | mean step ms | val bpb all | " + " | ".join(f"val bpb {g}" for g in groups) + " |")
    print("|---|---|---|---|" + "---|" * len(groups))
    for score, steps, step_ms, metrics in rows:
        print(f"| {score} | {steps} | {step_ms:.0f} | {metrics['val/bpb']:.3f} | "
              + " | ".join(f"{metrics[f'val/{g}/bpb']:.3f}" for g in groups) + " |")
    (dot_steps, dot_ms), (additive_steps, additive_ms) = [(steps, ms) for _, steps, ms, _ in rows]
    print(f"additive: {additive_ms / dot_ms:.2f}x the dot-product step time, {additive_steps / dot_steps:.2f}x the steps")
    path = args.out / "attention_scores.png"
    side_by_side(panels).save(path)
    print(f"attention maps ({args.probe} probe, every layer, dot left, additive right): "
          f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
