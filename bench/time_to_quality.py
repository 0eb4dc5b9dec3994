"""Validation bits per byte against wall-clock time: the nanoGPT-style baseline and the faster
recipe on the default corpus. On a CPU at the CPU preset's size, the same time budget each; on CUDA
at the GPU default's size (`python train.py`), the baseline its own 5,000 steps and the fast recipe
as many seconds as the baseline took.

Runs the real train.py twice from scratch, evaluating every 50 steps (250 on CUDA); prints the curves
and the time the faster recipe needs to reach the baseline's final bpb, and saves a PNG plot.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from matplotlib.figure import Figure

from bench.timing import REPO, header, machine, row, run_train

EVAL_LINE = re.compile(r"eval step (\d+) \(([\d.]+)s\): val loss [\d.]+ \| bpb ([\d.]+)")
RECIPES = {"baseline (nanoGPT-style)": "recipe=baseline", "fast recipe": "recipe=fast"}


def curve(name: str, overrides: list[str], out: Path) -> list[tuple[float, int, float]]:
    """[(seconds, step, val bpb)] of one run."""
    stdout, _ = run_train(name, [*overrides, "wandb.mode=disabled"], out / re.sub(r"[^a-z]+", "-", name))
    return [(float(t), int(s), float(b)) for s, t, b in EVAL_LINE.findall(stdout)]


def budget(seconds: float) -> list[str]:
    return ["train.max_iters=1000000", f"train.max_seconds={seconds:.0f}"]  # the lr decays over the seconds


def bpb_at(points: list[tuple[float, int, float]], seconds: float) -> float:
    """The last evaluation at or before `seconds`."""
    return [b for t, _, b in points if t <= seconds][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--minutes", type=float, default=10.0, help="each run's budget on a CPU")
    parser.add_argument("--fast", nargs="*", default=[], help="more overrides for the fast recipe's run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    (base_name, base_recipe), (fast_name, fast_recipe) = RECIPES.items()
    if args.device == "cpu":
        size, every = ["preset=cpu"], ["train.eval_interval=50"]
        base = curve(base_name, [*size, base_recipe, *budget(args.minutes * 60), *every], runs)
    else:  # the GPU default's size; the fast recipe gets the seconds the baseline's 5,000 steps took
        size, every = ["device=cuda"], ["train.eval_interval=250"]
        base = curve(base_name, [*size, base_recipe, "train.max_iters=5000", *every], runs)
        args.minutes = base[-1][0] / 60
    fast = curve(fast_name, [*size, fast_recipe, *budget(args.minutes * 60), *every, *args.fast], runs)
    curves = {base_name: base, fast_name: fast}
    print(f"val bits per byte vs wall-clock time, {' '.join(size)}, {machine(args.device)}, "
          f"{args.minutes:g} min each")
    header("minutes", *curves)
    for minute in range(1, int(args.minutes) + 1):
        row(minute, *(f"{bpb_at(points, minute * 60):.3f}" for points in curves.values()))
    target = base[-1][2]
    reached = next((t for t, _, b in fast if b <= target), None)
    print(f"baseline after {base[-1][0] / 60:.1f} min (step {base[-1][1]}): {target:.3f} bpb; fast recipe after "
          f"{fast[-1][0] / 60:.1f} min (step {fast[-1][1]}): {fast[-1][2]:.3f} bpb")
    print(f"fast recipe reaches {target:.3f} bpb after "
          + (f"{reached / 60:.1f} min, {reached / base[-1][0]:.2f} of the baseline's time" if reached
             else "-- (not within the budget)"))

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in curves.items():
        ax.plot([t / 60 for t, _, _ in points], [b for _, _, b in points], label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=f"wall-clock minutes ({machine(args.device)})", ylabel="val bits per byte",
           ylim=(None, min(3.2, max(b for points in curves.values() for _, _, b in points))))
    ax.legend()
    ax.grid(alpha=0.3)
    path = args.out / ("time_to_quality.png" if args.device == "cpu" else "time_to_quality_cuda.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
