"""Faults during training: kill -9, non-finite steps, an out_dir that cannot be written, damaged or
mismatched data. Each through the real train.py in a child process, where a user would meet it;
the non-finite guard's in-process tests are in tests/test_faults.py."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, tiny_args

from data.checkpoint import load_checkpoint


@pytest.fixture
def setup(tmp_path) -> dict:
    corpus = make_tiny_corpus(tmp_path / "corpus")
    args = [*tiny_args(corpus, tmp_path / 'prepared'),
            f"out_dir={tmp_path / 'out'}", "dtype=float32", "wandb.mode=disabled"]
    return {"tmp": tmp_path, "out": tmp_path / "out", "env": fresh_machine_env(tmp_path), "args": args,
            "bins": tmp_path / "prepared" / "custom"}


def train(setup: dict, *extra: str) -> subprocess.CompletedProcess:
    return run_entry("train.py", *setup["args"], *extra, cwd=setup["tmp"], env=setup["env"])


def test_non_finite_steps_are_skipped_and_too_many_in_a_row_stop_with_the_steps_named(setup):
    # a learning rate of 1e30 overflows the weights after one update: every later loss is NaN
    result = train(setup, "train.learning_rate=1e30", "train.max_nonfinite=3")
    assert result.returncode == 1
    assert "step 2: gradient norm is nan, update skipped (1 in a row, 1 in this run)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: non-finite loss or gradients at 3 steps in a row (steps 2 to 4): training stopped and the last "
        "checkpoint keeps the last finite weights; lower train.learning_rate, raise train.warmup_iters, or use "
        "dtype=float32")
    for name in ("ckpt.pt", "best.pt"):  # the step-0 checkpoint, untouched and finite
        checkpoint = load_checkpoint(setup["out"], name=name)
        assert checkpoint["step"] == 0
        assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def wait_for_a_save(checkpoint, previous: int | None, timeout: float = 120.0) -> None:
    """Until `checkpoint` holds a later step than `previous` (None: until it exists). A run resumed
    at step 0 saves step 0 again first, so a new file alone is no progress."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if checkpoint.exists() and (previous is None or load_checkpoint(checkpoint.parent)["step"] > previous):
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {previous} written within {timeout} s")


@pytest.mark.slow
def test_kill_9_three_times_then_resume_completes_and_every_checkpoint_loads(setup):
    args = [sys.executable, str(REPO / "train.py"), *setup["args"], "train.max_iters=250", "train.eval_interval=10",
            "train.log_interval=100"]
    checkpoint = setup["out"] / "ckpt.pt"
    rng = random.Random(0)
    for kill in range(3):
        previous = load_checkpoint(setup["out"])["step"] if checkpoint.exists() else None
        process = subprocess.Popen(args, cwd=setup["tmp"], env=setup["env"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_a_save(checkpoint, previous)
        time.sleep(rng.uniform(0.0, 0.5))  # saves come every ~0.1 s: kills land in steps, evaluations and saves
        assert process.poll() is None, f"run {kill} ended before its kill -9"
        process.kill()
        process.wait()
        for name in ("ckpt.pt", "best.pt"):
            load_checkpoint(setup["out"], name=name)  # raises if a kill left it half written
    steps_before_final = load_checkpoint(setup["out"])["step"]
    final = subprocess.run(args, cwd=setup["tmp"], env=setup["env"], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming from {checkpoint} at step {steps_before_final}" in final.stdout and steps_before_final > 0
    assert load_checkpoint(setup["out"])["step"] == 250
    assert load_checkpoint(setup["out"], name="best.pt")["step"] % 10 == 0


def test_an_out_dir_that_cannot_be_written_stops_before_training(setup):
    blocker = setup["tmp"] / "a-file"
    blocker.write_text("not a folder")
    result = train(setup, f"out_dir={blocker / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: out_dir={blocker / 'out'} is not a writable folder (Not a directory): "
                                     "choose another out_dir or fix its permissions")
    assert "step 1" not in result.stdout


def test_a_truncated_bin_is_rebuilt_from_the_source_text(setup):
    # the other damages, in process: tests/test_corpus.py
    assert train(setup, "train.max_iters=1").returncode == 0
    train_bin = setup["bins"] / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-7])
    result = train(setup, "train.max_iters=1", "train.resume=false", "train.overwrite=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data: training a 320-token BPE" in result.stdout  # rebuilt, not trusted


@pytest.mark.parametrize("content", [None, b"", b"\n\n  \n"])
def test_a_custom_folder_without_text_is_named(setup, content):
    folder = setup["tmp"] / "no-text"
    folder.mkdir()
    if content is not None:
        (folder / "blank.txt").write_bytes(content)
    result = train(setup, f"data.text_paths=[{folder}]")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert str(folder) in result.stderr
