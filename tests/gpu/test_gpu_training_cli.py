"""train.py on a GPU through its real entry point: the GPU default architecture with bf16 and
torch.compile, fp16 with loss scaling, the SDPA backend, an interrupted run that resumes to the
losses of an uninterrupted one, and torchrun (NCCL) matching one process step for step."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from .conftest import (
    GPU_DEVICE,
    ON_CPU,
    REPO,
    GpuWorkspace,
    gpu_dtype,
    model_line,
    not_on_cpu,
    offline_losses,
    printed_losses,
    printed_mfu,
    run_gpu_entry,
)

pytestmark = pytest.mark.gpu

# the GPU default of model/config.py's GPTConfig, spelled out because the shared overrides shrink the model
GPU_DEFAULT_MODEL = ["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256", "model.dropout=0.2"]


def assert_loss_falls(stdout: str) -> dict[int, float]:
    losses = printed_losses(stdout)
    assert len(losses) >= 2, f"fewer than two loss lines:\n{stdout[-2000:]}"
    steps = sorted(losses)
    assert losses[steps[-1]] < losses[steps[0]], f"the loss did not fall: {losses}"
    return losses


def test_gpu_default_architecture_trains_with_bf16_and_compile_and_reports_mfu(gpu_workspace: GpuWorkspace):
    out = gpu_workspace.tmp / "default-bf16-compile"
    # the CPU dry run keeps the tiny model: the default architecture compiled takes minutes on 2 cores
    model = [] if ON_CPU else GPU_DEFAULT_MODEL
    result = run_gpu_entry([str(REPO / "train.py"), *gpu_workspace.overrides(
        out, *model, "dtype=bfloat16", "compile=true", "train.batch_size=16", "train.max_iters=30",
        "train.eval_interval=15", "train.log_interval=5", "train.warmup_iters=5", "wandb.mode=offline",
        "wandb.attn_every=15")], cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    line = model_line(result.stdout)
    for word in (GPU_DEVICE, "bfloat16", "compile=true", f"cuda_graph={str(not ON_CPU).lower()}"):
        assert word in line, f"{word!r} missing from {line!r}"
    assert result.stdout.count("compiled the training step in ") == 1
    assert "could not be recorded" not in result.stderr, result.stderr[-3000:]  # the compiled step, replayed
    if not ON_CPU:
        assert "6 layers x 6 heads x 64 dims, context 256" in line
    assert_loss_falls(result.stdout)
    assert "attention report at step 15" in result.stdout and "attention report at step 30" in result.stdout
    assert (out / "ckpt.pt").is_file()
    mfu = printed_mfu(result.stdout)
    assert mfu, f"no MFU printed (is this GPU in trainer/mfu.py's peak table?): {line!r}"
    # the first log interval includes compilation, so only the last MFU must be above zero
    assert mfu[-1] > 0.0, f"MFU values {mfu}"
    if ON_CPU:
        pytest.skip(not_on_cpu("MFU within 0-100 % of a GPU's peak from the table (a CPU's peak is measured "
                               "once and cached, under whatever load the machine had then)"))
    assert all(0.0 <= value < 100.0 for value in mfu), f"MFU values {mfu} against {line!r}"


def test_fp16_trains_with_loss_scaling_and_the_loss_falls(gpu_workspace: GpuWorkspace):
    out = gpu_workspace.tmp / "fp16"
    result = run_gpu_entry([str(REPO / "train.py"), *gpu_workspace.overrides(
        out, f"dtype={gpu_dtype('float16')}", "train.max_iters=40", "train.eval_interval=20",
        "wandb.mode=disabled")], cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=300)
    # a GradScaler backing off its scale may skip a step or two; only a stop for non-finite steps is a failure
    assert result.returncode == 0, result.stderr[-3000:]
    assert "non-finite loss or gradients" not in result.stderr, result.stderr[-3000:]
    assert_loss_falls(result.stdout)
    if ON_CPU:
        pytest.skip(not_on_cpu("fp16 (train.py refuses it on a CPU; this ran in float32)"))
    line = model_line(result.stdout)
    assert re.search(r"\bfloat16\b", line), f"not float16 (bfloat16 would be the wrong thing): {line!r}"


def test_sdpa_attention_trains(gpu_workspace: GpuWorkspace):
    out = gpu_workspace.tmp / "sdpa"
    result = run_gpu_entry([str(REPO / "train.py"), *gpu_workspace.overrides(
        out, "model.attn_impl=sdpa", "dtype=bfloat16", "train.max_iters=40",
        "train.eval_interval=20", "wandb.mode=disabled")], cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attn_impl=sdpa" in model_line(result.stdout)
    assert_loss_falls(result.stdout)


# steps of the resume test; a GPU runs them in seconds, so it needs enough for the SIGINT to land
# mid-run, while the CPU dry run (slower per step, no race) keeps it short
RESUME_STEPS = 120 if ON_CPU else 300


def resume_overrides(workspace: GpuWorkspace, out: Path) -> list[str]:
    # fp32 so two runs agree to round-off (eager: compiled, the embedding's gradient is summed with atomic adds, in
    # no fixed order); dropout so the CUDA RNG state must survive the resume
    return workspace.overrides(out, f"train.max_iters={RESUME_STEPS}", "train.log_interval=1", "train.eval_interval=1000",
                               "dtype=float32", "compile=false", "model.dropout=0.1", "wandb.attn_every=0",
                               "wandb.mode=offline")


def test_sigint_then_resume_gives_the_losses_of_an_uninterrupted_run(gpu_workspace: GpuWorkspace):
    tmp, env = gpu_workspace.tmp, gpu_workspace.env
    full = run_gpu_entry([str(REPO / "train.py"), *resume_overrides(gpu_workspace, tmp / "resume-full")],
                         cwd=tmp, env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp / "resume-interrupted"
    # unbuffered, so "step 50/" reaches us as it is printed, not 8 KiB later when a fast GPU has finished
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *resume_overrides(gpu_workspace, out)],
                                   cwd=tmp, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, stdin=subprocess.DEVNULL)
        watchdog = threading.Timer(300, process.kill)  # reading stdout line by line has no timeout of its own
        watchdog.start()
        try:
            seen = []
            for line in process.stdout:
                seen.append(line)
                if line.startswith("step 50/"):
                    process.send_signal(signal.SIGINT)
                    break
            stdout = "".join(seen) + process.communicate(timeout=300)[0]
        finally:
            watchdog.cancel()
        stderr.seek(0)
        err = stderr.read()
    assert process.returncode == 0, err[-2000:]
    assert "interrupted after step" in stdout and "SIGINT" in err, stdout[-2000:]
    stopped_at = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)["step"]
    assert 50 <= stopped_at < RESUME_STEPS, f"stopped at {stopped_at}: the SIGINT came too late to interrupt anything"

    resumed = run_gpu_entry([str(REPO / "train.py"), *resume_overrides(gpu_workspace, out)], cwd=tmp, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'ckpt.pt'} at step {stopped_at}" in resumed.stdout
    expected, got = offline_losses(tmp / "resume-full"), offline_losses(out)
    steps = range(1, RESUME_STEPS + 1)
    assert set(steps) <= set(got) and set(steps) <= set(expected)
    # the steps before the interrupt as well as after it: the same seed takes the same steps
    differing = [(step, got[step], expected[step]) for step in steps if abs(got[step] - expected[step]) > 1e-4]
    assert not differing, f"resumed at {stopped_at}; first differences (step, resumed, uninterrupted): {differing[:3]}"


def torchrun_losses(workspace: GpuWorkspace, name: str, launcher: list[str], env: dict[str, str]) -> list[float]:
    out = workspace.tmp / name
    overrides = workspace.overrides(out, "train.max_iters=10", "train.log_interval=1", "train.eval_interval=100",
                                    "train.batch_size=8", "dtype=float32", "model.dropout=0.0", "wandb.attn_every=0",
                                    "wandb.mode=offline")
    result = subprocess.run([*launcher, str(REPO / "train.py"), *overrides], cwd=workspace.tmp, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = offline_losses(out)
    assert sorted(losses) == list(range(1, 11)), sorted(losses)
    return [losses[step] for step in range(1, 11)]


def test_torchrun_processes_match_one_process_at_every_step(gpu_workspace: GpuWorkspace):
    # one process per GPU, at most 2; the CPU dry run uses 2 gloo processes, as tests/test_distributed_cli.py
    processes = 2 if ON_CPU else min(2, torch.cuda.device_count())
    env = {**gpu_workspace.env, "OMP_NUM_THREADS": "1"}
    single = torchrun_losses(gpu_workspace, "ddp-one", [sys.executable], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    several = torchrun_losses(gpu_workspace, f"ddp-{processes}", torchrun, env)
    assert max(abs(a - b) for a, b in zip(single, several)) <= 1e-4, list(zip(single, several))
    assert single[-1] < single[0]


def test_the_training_step_replayed_as_a_cuda_graph_takes_the_eager_steps(gpu_workspace: GpuWorkspace):
    # fp32 and dropout: the same kernels on the same numbers, the same random draws; trainer/cuda_graph.py.
    # Eager kernels (compiled, the embedding's gradient is summed with atomic adds, in no fixed order); the GPU
    # default test above records compiled code
    def losses(setting: str) -> dict[int, float]:
        out = gpu_workspace.tmp / f"cuda-graph-{setting}"
        result = run_gpu_entry([str(REPO / "train.py"), *gpu_workspace.overrides(
            out, f"cuda_graph={setting}", "dtype=float32", "compile=false", "model.dropout=0.1", "train.max_iters=40",
            "train.log_interval=1", "train.eval_interval=20", "wandb.attn_every=0", "wandb.mode=offline")],
            cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"cuda_graph={setting}" in model_line(result.stdout)
        assert "could not be recorded" not in result.stderr, result.stderr[-3000:]  # no eager fallback
        return offline_losses(out)

    if ON_CPU:
        pytest.skip(not_on_cpu("CUDA graphs (tests/test_cuda_graph_training.py replays a CPU stand-in)"))
    eager, replayed = losses("false"), losses("true")
    assert sorted(replayed) == list(range(1, 41))
    differing = [(step, replayed[step], eager[step]) for step in eager if abs(replayed[step] - eager[step]) > 1e-5]
    assert not differing, f"first differences (step, replayed, eager): {differing[:3]}"
