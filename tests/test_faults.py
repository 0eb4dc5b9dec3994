"""Faults during training: kill -9, non-finite steps, an out_dir that cannot be written, damaged or
mismatched data. Each through the real train.py where a user would meet it."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, tiny_args
from trainer.checkpoint import load_checkpoint
from trainer.nonfinite import NonFiniteGuard, step_unless
from trainer.optim import make_optimizers


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


def test_a_finite_step_resets_the_count_of_non_finite_steps_in_a_row():
    guard = NonFiniteGuard(max_in_row=2, verbose=False)
    for step, norm in enumerate([float("nan"), 1.0, float("inf"), float("nan"), 1.0], start=1):
        guard.check(torch.tensor(norm), step)
    assert guard.failure() is None and guard.skipped == 0  # nothing is read before log time
    guard.read()
    assert guard.skipped == 3 and "at 2 steps in a row (steps 3 to 4)" in str(guard.failure())


class NoHostRead(torch.Tensor):
    """A tensor whose value the host must not read: a code path that syncs on it fails."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.tolist):
            raise AssertionError(f"the host read the flag ({func.__name__})")
        return super().__torch_function__(func, types, args, kwargs)


def optimizers_after_one_step(optimizer: str):
    from trainer.config import TrainConfig

    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tc = TrainConfig(optimizer=optimizer, weight_decay=0.1, learning_rate=1e-2, beta1=0.9, beta2=0.99)
    optimizers = make_optimizers(model, tc, torch.device("cpu"))
    idx = torch.randint(0, 32, (2, 8))
    model(idx, idx)[1].backward()
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizers, idx


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_non_finite_step_leaves_weights_and_optimizer_state_untouched(optimizer):
    model, optimizers, idx = optimizers_after_one_step(optimizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    states = [{id(p): {k: v.clone() for k, v in s.items()} for p, s in o.state.items()} for o in optimizers]
    model.wte.weight.register_hook(lambda g: g * float("nan"))  # every gradient that flows into it is NaN
    model(idx, idx)[1].backward()
    nonfinite = ~torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    step_unless(nonfinite.as_subclass(NoHostRead), optimizers, torch.amp.GradScaler("cpu", enabled=False))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    for o, before in zip(optimizers, states):
        assert all(torch.equal(before[id(p)][k], v) for p, s in o.state.items() for k, v in s.items())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_optimizers_step_when_the_flag_is_false_without_the_host_reading_it(optimizer):
    model, optimizers, idx = optimizers_after_one_step(optimizer)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    model(idx, idx)[1].backward()
    step_unless(torch.tensor(False).as_subclass(NoHostRead), optimizers, torch.amp.GradScaler("cpu", enabled=False))
    assert all(not torch.equal(weights[k], v) for k, v in model.named_parameters())


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
def test_kill_9_five_times_then_resume_completes_and_every_checkpoint_loads(setup):
    args = [sys.executable, str(REPO / "train.py"), *setup["args"], "train.max_iters=600", "train.eval_interval=10",
            "train.log_interval=100"]
    checkpoint = setup["out"] / "ckpt.pt"
    rng = random.Random(0)
    for kill in range(5):
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
    assert load_checkpoint(setup["out"])["step"] == 600
    assert load_checkpoint(setup["out"], name="best.pt")["step"] % 10 == 0


def test_an_out_dir_that_cannot_be_written_stops_before_training(setup):
    blocker = setup["tmp"] / "a-file"
    blocker.write_text("not a folder")
    result = train(setup, f"out_dir={blocker / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: out_dir={blocker / 'out'} is not a writable folder (Not a directory): "
                                     "choose another out_dir or fix its permissions")
    assert "step 1" not in result.stdout


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_damaged_bins_are_rebuilt_from_the_source_text(setup, damage):
    assert train(setup, "train.max_iters=1").returncode == 0
    train_bin = setup["bins"] / "train.bin"
    if damage == "missing":
        train_bin.unlink()
    else:
        train_bin.write_bytes(b"" if damage == "empty" else train_bin.read_bytes()[:-7])
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
