"""Validation bits per byte against wall-clock time: the nanoGPT-style baseline and the faster
recipe, same model size, on the default corpus, the same time budget each.

    python bench/time_to_quality.py [--minutes 10] [--out bench/results]

Runs the real train.py twice (preset=cpu recipe=baseline, and preset=cpu recipe=fast) with train.max_seconds,
from scratch (train.resume=false: a run left in its folder starts over), evaluating every 50
steps, reads the evaluation lines, prints the curves as a table and the time the faster recipe
needs to reach the baseline's final bpb, and saves a PNG plot.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL_LINE = re.compile(r"eval step (\d+) \(([\d.]+)s\): val loss [\d.]+ \| bpb ([\d.]+)")
RECIPES = {"baseline (nanoGPT-style)": ["recipe=baseline"], "fast recipe": ["recipe=fast"]}


def curve(name: str, extra: list[str], minutes: float, out: Path) -> list[tuple[float, int, float]]:
    """[(seconds, step, val bpb)] of one run."""
    cmd = [sys.executable, str(REPO / "train.py"), "preset=cpu", *extra, "train.max_iters=1000000",
           f"train.max_seconds={minutes * 60}", "train.eval_interval=50", "wandb.mode=disabled", "train.resume=false",
           f"out_dir={out / re.sub(r'[^a-z]+', '-', name)}"]
    print(f"running {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return [(float(t), int(s), float(b)) for s, t, b in EVAL_LINE.findall(result.stdout)]


def bpb_at(points: list[tuple[float, int, float]], seconds: float) -> float:
    """The last evaluation at or before `seconds`."""
    return [b for t, _, b in points if t <= seconds][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {name: curve(name, extra, args.minutes, args.out / "runs") for name, extra in RECIPES.items()}
    (base_name, base), (fast_name, fast) = curves.items()
    print(f"val bits per byte vs wall-clock time, CPU preset size, {platform.machine()} CPU, {args.minutes:g} min each")
    marks = [m for m in range(1, int(args.minutes) + 1)]
    print("| minutes | " + " | ".join(curves) + " |")
    print("|---|" + "---|" * len(curves))
    for minute in marks:
        print(f"| {minute} | " + " | ".join(f"{bpb_at(points, minute * 60):.3f}" for points in curves.values()) + " |")
    target = base[-1][2]
    reached = next((t for t, _, b in fast if b <= target), None)
    print(f"baseline after {base[-1][0] / 60:.1f} min (step {base[-1][1]}): {target:.3f} bpb; fast recipe after "
          f"{fast[-1][0] / 60:.1f} min (step {fast[-1][1]}): {fast[-1][2]:.3f} bpb")
    print(f"fast recipe reaches {target:.3f} bpb after " + (f"{reached / 60:.1f} min" if reached else "-- (not within the budget)"))

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        ax.plot([t / 60 for t, _, _ in points], [b for _, _, b in points], label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall-clock minutes (2-core CPU)")
    ax.set_ylabel("val bits per byte")
    ax.set_ylim(top=min(3.2, max(b for points in curves.values() for _, _, b in points)))
    ax.legend()
    ax.grid(alpha=0.3)
    path = args.out / "time_to_quality.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
