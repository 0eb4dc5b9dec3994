"""What the attention reports cost a training run: the real train.py twice from scratch, the same
steps and seed, with its reports and with `wandb.attn_every=0`; the difference in wall time is the
overhead, wherever it comes from (the numbers, the pictures, the wait for the final report's).

Arguments are train.py overrides for both runs. `train.max_seconds=0` makes both run the same steps
(a time budget would let the run with reports stop earlier); wandb runs offline.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.timing import header, row, run_train

REPORT_LINE = re.compile(r"attention report at step (\d+) in ([\d.]+)s")
DONE_LINE = re.compile(r"done in \S+ at step (\d+)")
MODEL_LINE = re.compile(r"^model: .*\| (\S+), (\S+), compile=(\S+),", re.MULTILINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for both runs, e.g. preset=cpu")
    args = parser.parse_args()
    if any(o.startswith("wandb.attn_every=0") for o in args.overrides):
        raise SystemExit("wandb.attn_every=0 turns the reports off in both runs: leave it out or give a positive N")
    both = [*args.overrides, "train.max_seconds=0", "wandb.mode=offline"]
    with tempfile.TemporaryDirectory(prefix="report-overhead-") as tmp:
        without_out, without = run_train("without reports", [*both, "wandb.attn_every=0"], Path(tmp) / "without")
        stdout, with_reports = run_train("with reports", both, Path(tmp) / "with")
    reports = [(int(step), float(seconds)) for step, seconds in REPORT_LINE.findall(stdout)]
    in_lines = sum(seconds for _, seconds in reports)
    model = MODEL_LINE.search(stdout)
    print(f"attention report overhead: train.py {' '.join(args.overrides) or '(defaults)'}, "
          + ("{}, {}, compile={}".format(*model.groups()) if model else "device unknown"))
    header("run", "steps", "wall time (s)", "reports", "report lines (s)")
    row("without reports", DONE_LINE.search(without_out)[1], f"{without:.1f}", 0, 0)
    row("with reports", DONE_LINE.search(stdout)[1], f"{with_reports:.1f}", len(reports), f"{in_lines:.1f}")
    overhead = with_reports - without
    print(f"overhead: {overhead:+.1f} s = {100 * overhead / without:+.1f} % of the run without reports "
          f"(the report lines alone: {100 * in_lines / without:.1f} %); reports at steps "
          + ", ".join(f"{step} ({seconds:.1f} s)" for step, seconds in reports))


if __name__ == "__main__":
    main()
