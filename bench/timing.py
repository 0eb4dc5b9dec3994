"""What the benchmarks share: a timer that waits for the device, train.py's own training step timed,
train.py run from scratch, and the rows of the markdown tables they print."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from train import loss_scaler, train_step
from trainer.config import TrainConfig
from trainer.cuda_graph import GraphedTrainStep

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of fn(), the device synchronised before and after so that a GPU's queued work is inside."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def step_timer(model: torch.nn.Module, step_model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
               dtype: torch.dtype, device: torch.device, tc: TrainConfig, cuda_graph: bool = False
               ) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """Seconds of train.py's train_step on a host batch x, y (B, T), as a function of x, y: step_model
    (the model or it compiled) runs the forward; the loss scaler lives across steps, as in train.py;
    cuda_graph: replayed as train.py's cuda_graph=true replays it (after its eager warm-up steps)."""
    step = partial(train_step, model, step_model, optimizers, loss_scaler(device, dtype), tc=tc, dtype=dtype)
    if cuda_graph:
        step = GraphedTrainStep(step, optimizers, device)
    return lambda x, y: timed(lambda: step(x, y), device)


def run_train(name: str, overrides: list[str], out_dir: Path) -> tuple[str, float]:
    """train.py with `overrides`, from scratch: its stdout and wall seconds; a failed run ends the benchmark."""
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, "train.resume=false", "train.overwrite=true",
           f"out_dir={out_dir}"]  # a run left by the last benchmark is replaced
    print(f"running {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({' '.join(cmd[1:])}):\n{result.stderr[-2000:]}")
    return result.stdout, seconds


def machine(device: torch.device | str = "cpu") -> str:
    """The device a table was measured on, for the line above it."""
    device = torch.device(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()}, {torch.get_num_threads()} threads")
    return f"{device} ({where}), torch {torch.__version__}"


def row(*cells: object) -> None:
    """One row of a markdown table, printed at once: a long benchmark shows each as it comes."""
    print("| " + " | ".join(map(str, cells)) + " |", flush=True)


def header(*columns: str) -> None:
    row(*columns)
    print("|" + "---|" * len(columns))
