"""Data parallel training through torchrun: two gloo processes on CPU take the same steps as one, and
one process resumes from their checkpoint."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_history, tiny_args


def overrides(tmp_path, name: str, corpus) -> list[str]:
    return [*tiny_args(corpus, tmp_path / 'prepared'),
            f"out_dir={tmp_path / name}", "train.max_iters=10", "train.log_interval=1", "train.eval_interval=100",
            "train.batch_size=8", "dtype=float32", "model.dropout=0.0", "wandb.attn_every=0"]


def train_losses(tmp_path, name: str, launcher: list[str], env: dict, corpus) -> list[float]:
    out = tmp_path / name
    result = subprocess.run([*launcher, str(REPO / "train.py"), *overrides(tmp_path, name, corpus)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    history = sorted((row["_step"], row["train/loss"]) for row in run_history(run_dir) if "train/loss" in row)
    assert [s for s, _ in history] == list(range(1, 11))
    return [loss for _, loss in history]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_every_step(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = {**fresh_machine_env(tmp_path), "OMP_NUM_THREADS": "1"}
    single = train_losses(tmp_path, "one", [sys.executable], env, corpus)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = train_losses(tmp_path, "two", torchrun, env, corpus)
    assert max(abs(a - b) for a, b in zip(single, double)) <= 1e-5
    assert single[-1] < single[0]

    # each rank saved its own random state; one process resumes from them (it used to need as many)
    checkpoint = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and all(state["torch"].dtype == torch.uint8 for state in checkpoint["rng"])
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides(tmp_path, "two", corpus),
                              "train.max_iters=12"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was saved by 2 process(es), this run has 1" in resumed.stdout
    assert f"resuming from {tmp_path / 'two' / 'ckpt.pt'} at step 10" in resumed.stdout
