"""The GPU suite's switches and shared pieces.

Every test in tests/gpu carries the `gpu` marker and is skipped, with the reason, when torch sees
no CUDA device. GPU_SUITE_ON_CPU=1 runs the same tests on the CPU instead: the commands, the
checkpoints and the parsing are exercised on a machine without a GPU, bf16 stays bf16 (CPUs
run it), fp16 becomes float32, and each assertion that only a GPU can satisfy (kernel names,
CUDA graphs, fp16) is skipped inside its test, after everything before it has run.

Shared here: the override lists, a subprocess runner with a timeout, parsers for train.py's log
lines, one prepared tiny corpus for the whole session and one checkpoint trained once for the
tests that sample from it. The names differ from tests/conftest.py's, whose helpers these build on.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # tests/conftest.py is imported by name
    sys.path.insert(0, str(TESTS))

from conftest import (  # noqa: E402  (tests/conftest.py)
    PROBES,
    REPO,
    TINY,
    fresh_machine_env,
    make_tiny_corpus,
    run_history,
)

ON_CPU = os.environ.get("GPU_SUITE_ON_CPU") == "1"
GPU_DEVICE = "cpu" if ON_CPU else "cuda"
# tests/conftest.py's tiny model and schedule, on the device under test
GPU_TINY = [o for o in TINY if not o.startswith("device=")] + [f"device={GPU_DEVICE}"]
NO_GPU_REASON = (f"no CUDA device visible to torch {torch.__version__}: run on a GPU machine with "
                 "`python -m pytest tests/gpu` (GPU_SUITE_ON_CPU=1 dry-runs the suite on the CPU)")
CPU_DRY_RUN = "GPU_SUITE_ON_CPU=1 dry run"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the hook sees the whole session's items: only the ones marked gpu are ours to skip
    if torch.cuda.is_available() or ON_CPU:
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


def gpu_dtype(name: str) -> str:
    """The dtype a test asks for, or float32 in the CPU dry run where that dtype cannot run there
    (train.py refuses fp16 on a CPU; bf16 autocast works on any CPU)."""
    return "float32" if ON_CPU and name == "float16" else name


def not_on_cpu(what: str) -> str:
    """The reason a dry-run test stops where the rest needs a real GPU; the test calls pytest.skip
    itself, so the skip is reported at the test's line."""
    return f"{CPU_DRY_RUN}: all before this line ran; left for a CUDA GPU: {what}"


def run_gpu_entry(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`python <args>` as a user would run it (a script or `-m module`), with hydra overrides and
    no stdin; a hung run fails the test after `timeout` seconds instead of eating the suite's time."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def printed_losses(stdout: str) -> dict[int, float]:
    """step -> training loss, from train.py's `step N/M | loss X | ...` lines."""
    return {int(step): float(loss) for step, loss in re.findall(r"^step (\d+)/\d+ \| loss ([-\d.naif]+)", stdout, re.M)}


def printed_mfu(stdout: str) -> list[float]:
    """Every MFU percentage train.py printed, in order."""
    return [float(value) for value in re.findall(r"MFU ([-\d.]+)%", stdout)]


def model_line(stdout: str) -> str:
    """train.py's `model: ... | device, dtype, compile=..., ...` line."""
    lines = [line for line in stdout.splitlines() if line.startswith("model:")]
    assert lines, f"no `model:` line in the output:\n{stdout[-2000:]}"
    return lines[0]


def offline_losses(out: Path) -> dict[int, float]:
    """step -> train/loss over every offline wandb run in out/wandb (an interrupted run and its
    resumption are two runs)."""
    rows = [row for run_dir in sorted((out / "wandb").glob("offline-run-*")) for row in run_history(run_dir)]
    return {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}


@dataclass
class GpuWorkspace:
    """One tiny corpus, prepared once, and a wandb sandbox, for every training run of the session."""

    tmp: Path
    corpus: Path
    data_root: Path
    env: dict[str, str]

    def overrides(self, out: Path, *extra: str) -> list[str]:
        """The tiny model on the device under test, on this corpus, writing into `out`; `extra` wins."""
        return [*GPU_TINY, "data=custom", f"data.text_paths=[{self.corpus}]", f"data.root={self.data_root}",
                f"out_dir={out}", *extra]


@pytest.fixture(scope="session")
def gpu_workspace(tmp_path_factory: pytest.TempPathFactory) -> GpuWorkspace:
    tmp = tmp_path_factory.mktemp("gpu")
    corpus = make_tiny_corpus(tmp / "corpus")
    return GpuWorkspace(tmp, corpus, tmp / "prepared", fresh_machine_env(tmp))


@dataclass
class TrainedRun:
    out: Path
    stdout: str
    steps: int


@pytest.fixture(scope="session")
def trained_gpu_run(gpu_workspace: GpuWorkspace) -> TrainedRun:
    """A tiny model trained once on the device under test (60 steps, fp32, explicit attention,
    the probes of tests/test_entrypoints_cli.py stored in the checkpoint), for sample.py, compiled
    decoding and heads.report. block_size 32, so 40 new tokens run past it."""
    out = gpu_workspace.tmp / "trained"
    steps = 60
    result = run_gpu_entry(
        [str(REPO / "train.py"), *gpu_workspace.overrides(out, f"train.max_iters={steps}", "train.eval_interval=30",
                                                          "dtype=float32", "wandb.mode=disabled",
                                                          f"wandb.probes=[{PROBES[0]!r},{PROBES[1]!r}]")],
        cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return TrainedRun(out, result.stdout, steps)
