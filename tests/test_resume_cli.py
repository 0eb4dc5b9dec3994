"""Interrupted runs, through train.py in child processes: SIGINT saves and exits 0, resuming gives the
losses of an uninterrupted run, and a resume with another model shape names the differing keys."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    REPO,
    fresh_machine_env,
    make_tiny_corpus,
    run_entry,
    run_history,
    tiny_args,
)


def overrides(tmp_path, corpus, out, *extra: str) -> list[str]:
    return [*tiny_args(corpus, tmp_path / 'prepared'), f"out_dir={out}",
            "train.max_iters=200", "train.log_interval=1", "train.eval_interval=1000", "dtype=float32",
            "model.dropout=0.1", "wandb.attn_every=0", *extra]


def losses(out) -> dict[int, float]:
    rows = [row for run_dir in sorted((out / "wandb").glob("offline-run-*")) for row in run_history(run_dir)]
    return {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}


@pytest.mark.slow
def test_sigint_saves_and_a_resumed_run_matches_an_uninterrupted_one(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    full = run_entry("train.py", *overrides(tmp_path, corpus, tmp_path / "full"), cwd=tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides(tmp_path, corpus, out)], cwd=tmp_path,
                               env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    for line in process.stdout:
        if line.startswith("step 50/"):
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert "interrupted after step" in stdout and "SIGINT" in stderr
    stopped_at = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 50 <= stopped_at < 200

    resumed = run_entry("train.py", *overrides(tmp_path, corpus, out), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'ckpt.pt'} at step {stopped_at}" in resumed.stdout
    assert "other settings" not in resumed.stdout  # the same command: nothing differs
    expected, got = losses(tmp_path / "full"), losses(out)
    assert set(range(1, 201)) <= set(got)
    # equal up to float round-off: MKL may sum in another order when buffers sit at other addresses
    differing = [(step, got[step], expected[step]) for step in range(stopped_at + 1, 201)
                 if abs(got[step] - expected[step]) > 1e-5]
    assert not differing, f"resumed at {stopped_at}; first differences: {differing[:3]}"


def test_resuming_with_another_model_shape_names_the_differing_keys(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    out = tmp_path / "out"
    first = run_entry("train.py", *overrides(tmp_path, corpus, out, "train.max_iters=5", "wandb.mode=disabled"),
                      cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "ckpt.pt").read_bytes()
    second = run_entry("train.py", *overrides(tmp_path, corpus, out, "train.max_iters=5", "wandb.mode=disabled",
                                              "model.n_layer=3"), cwd=tmp_path, env=env)
    assert second.returncode == 2
    assert "cannot resume from" in second.stderr and "n_layer (checkpoint 2, config 3)" in second.stderr
    assert (out / "ckpt.pt").read_bytes() == before  # nothing written over the good checkpoint


def test_a_resume_says_what_differs_from_the_checkpoints_run_and_refuses_to_go_back(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    out = tmp_path / "out"
    args = overrides(tmp_path, corpus, out, "wandb.mode=disabled", "train.eval_interval=10")
    assert run_entry("train.py", *args, "train.max_iters=10", cwd=tmp_path, env=env).returncode == 0
    before = (out / "ckpt.pt").read_bytes()
    back = run_entry("train.py", *args, "train.max_iters=5", cwd=tmp_path, env=env)
    assert back.returncode == 2 and back.stderr.strip() == (
        f"error: train.max_iters=5 is below the step {out / 'ckpt.pt'} is at (10): raise train.max_iters to train "
        "on, or train.resume=false train.overwrite=true to start over")
    assert (out / "ckpt.pt").read_bytes() == before and "done" not in back.stdout
    on = run_entry("train.py", *args, "train.max_iters=20", "train.batch_size=16", cwd=tmp_path, env=env)
    assert on.returncode == 0, on.stderr[-2000:]
    assert (f"note: {out / 'ckpt.pt'} was trained with other settings (train.batch_size 8 -> 16, train.max_iters 10 -> "
            "20, train.lr_decay_iters 10 -> 20): the steps from here use this command's, so the run differs from an "
            "uninterrupted one with either") in on.stdout.splitlines()
