"""What the attention report costs a training run: the real train.py twice from scratch, the same
steps and seed, once with its reports (`wandb.attn_every`) and once without (`wandb.attn_every=0`).
The difference in wall time is the overhead, wherever it comes from: the report's numbers, the
pictures drawn in place or by worker processes (which share the host with training), the wait for
the final report's pictures.

    python bench/report_overhead.py                                    # the GPU default, on a GPU
    python bench/report_overhead.py preset=cpu train.max_iters=460     # the CPU main job's steps

Arguments are train.py overrides for both runs; `train.max_seconds=0` is added so that both run
the same steps (a time budget would let the run with reports stop earlier). wandb runs offline.
Prints each run's wall time and steps, the seconds train.py's "attention report at step N in X s"
lines add up to, and the overhead as a share of the run without reports.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT_LINE = re.compile(r"attention report at step (\d+) in ([\d.]+)s")
DONE_LINE = re.compile(r"done in \S+ at step (\d+)")
MODEL_LINE = re.compile(r"^model: .*\| (\S+), (\S+), compile=(\S+),", re.MULTILINE)


def run(overrides: list[str], out: Path) -> dict:
    """One train.py run from scratch: its wall time, steps, device and report lines."""
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, "train.max_seconds=0", "train.resume=false",
           "wandb.mode=offline", f"out_dir={out}"]
    print(f"running: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "WANDB_MODE": "offline"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"train.py failed ({' '.join(cmd[1:])}):\n{result.stderr[-2000:]}")
    model = MODEL_LINE.search(result.stdout)
    return {"seconds": seconds, "steps": int(DONE_LINE.search(result.stdout).group(1)),
            "reports": [(int(s), float(t)) for s, t in REPORT_LINE.findall(result.stdout)],
            "device": "{}, {}, compile={}".format(*model.groups()) if model else "device unknown"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for both runs, e.g. preset=cpu")
    args = parser.parse_args()
    if any(o.startswith("wandb.attn_every=0") for o in args.overrides):
        raise SystemExit("wandb.attn_every=0 turns the reports off in both runs: leave it out or give a positive N")
    with tempfile.TemporaryDirectory(prefix="report-overhead-") as tmp:
        without = run([*args.overrides, "wandb.attn_every=0"], Path(tmp) / "without")
        with_reports = run(args.overrides, Path(tmp) / "with")
    overhead = with_reports["seconds"] - without["seconds"]
    in_lines = sum(t for _, t in with_reports["reports"])
    print(f"attention report overhead: train.py {' '.join(args.overrides) or '(defaults)'}, "
          f"{with_reports['device']}")
    print("| run | steps | wall time (s) | reports | report lines (s) |")
    print("|---|---|---|---|---|")
    print(f"| without reports | {without['steps']} | {without['seconds']:.1f} | 0 | 0 |")
    print(f"| with reports | {with_reports['steps']} | {with_reports['seconds']:.1f} | {len(with_reports['reports'])} "
          f"| {in_lines:.1f} |")
    print(f"overhead: {overhead:+.1f} s = {100 * overhead / without['seconds']:+.1f} % of the run without reports "
          f"(the report lines alone: {100 * in_lines / without['seconds']:.1f} %); reports at steps "
          + ", ".join(f"{s} ({t:.1f} s)" for s, t in with_reports["reports"]))


if __name__ == "__main__":
    main()
