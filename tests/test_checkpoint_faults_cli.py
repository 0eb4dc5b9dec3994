"""Nothing lost, nothing cryptic, for checkpoints, through the real train.py, sample.py and
heads.report in child processes: one run per out_dir (a lock), no trained run replaced by accident,
a real full disk and a second Ctrl-C mid-save are one line with no debris, and damaged checkpoints
are refused by name in sample.py, train.py's resume and heads.report. The lock's own fallback is
in tests/test_checkpoint_faults.py."""
from __future__ import annotations

import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    fresh_machine_env,
    make_tiny_corpus,
    run_entry,
    small_tmpfs,
    tiny_args,
)

from common.folders import TEMP_SUFFIX
from data.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny finished run (30 steps) and its prepared data, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = make_tiny_corpus(tmp / "corpus")
    env = fresh_machine_env(tmp)
    data = [*tiny_args(corpus, tmp / 'prepared'), "dtype=float32",
            "wandb.mode=disabled"]
    result = run_entry("train.py", *data, f"out_dir={tmp / 'out'}", cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"tmp": tmp, "out": tmp / "out", "env": env, "data": data}


def start(trained: dict, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *trained["data"], f"out_dir={out}", *extra],
                            cwd=trained["tmp"], env=trained["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def one_error_line(result, code: int = 2) -> str:
    """The single stderr line of a run that stopped as the README promises."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def no_debris(folder: Path) -> None:
    assert not list(folder.glob(f"*{TEMP_SUFFIX}")), sorted(p.name for p in folder.iterdir())


def copy_run(trained: dict, folder: Path) -> Path:
    shutil.copytree(trained["out"], folder)
    return folder


# --- one run per out_dir -------------------------------------------------------------------------

def test_a_second_run_on_a_busy_out_dir_stops_naming_the_first_which_finishes_unharmed(trained, tmp_path):
    out = tmp_path / "out"
    first = start(trained, out, "train.max_iters=100000", "train.eval_interval=10")
    for line in first.stdout:
        if line.startswith("step 15/"):  # past its first periodic save
            break
    second = run_entry("train.py", *trained["data"], f"out_dir={out}", cwd=trained["tmp"], env=trained["env"])
    line = one_error_line(second)
    assert line.startswith(f"error: out_dir={out} is in use by pid {first.pid} on ")
    assert "train.py" in line and line.endswith("wait for that run to end, stop it, or choose another out_dir")
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    stopped = load_checkpoint(out)
    assert stopped["step"] > 15 and f"interrupted after step {stopped['step']}" in stdout
    assert all(torch.isfinite(t).all() for t in stopped["model"].values())
    no_debris(out)


def test_two_runs_started_together_on_one_out_dir_one_trains_and_one_stops(trained, tmp_path):
    out = tmp_path / "out"
    runs = [start(trained, out) for _ in range(2)]
    stderrs = [run.communicate(timeout=300)[1] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], [stderr[-1000:] for stderr in stderrs]
    loser = next(stderr for run, stderr in zip(runs, stderrs) if run.returncode == 2)
    assert loser.strip().startswith(f"error: out_dir={out} is in use by pid ")
    for name in ("ckpt.pt", "best.pt"):
        checkpoint = load_checkpoint(out, name)
        assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert load_checkpoint(out)["step"] == 30
    no_debris(out)


def test_a_killed_run_leaves_no_lock_behind_and_only_its_own_debris_is_removed(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    users = {"thesis.tmp": "my notes", "ckpt.pt.tmp": "mine too"}  # a user's files in out_dir, named like temp files
    for name, text in users.items():
        (out / name).write_text(text)
    first = start(trained, out, "train.max_iters=100000")
    for line in first.stdout:
        if line.startswith("step 5/"):
            break
    first.kill()  # kill -9: the kernel drops the lock with the process
    first.wait()
    debris = out / f".ckpt.pt.{first.pid}{TEMP_SUFFIX}"
    debris.write_bytes(b"half a checkpoint")  # what a kill mid-save leaves
    result = run_entry("train.py", *trained["data"], f"out_dir={out}", "train.max_iters=40", cwd=trained["tmp"],
                       env=trained["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(out)["step"] == 40
    assert not debris.exists() and {name: (out / name).read_text() for name in users} == users


# --- a trained run is never replaced by accident -------------------------------------------------

def test_resume_false_on_a_trained_folder_refuses_and_keeps_both_checkpoints(trained, tmp_path):
    out = copy_run(trained, tmp_path / "out")
    before = {name: (out / name).read_bytes() for name in ("ckpt.pt", "best.pt")}
    result = run_entry("train.py", *trained["data"], f"out_dir={out}", "train.resume=false", cwd=trained["tmp"],
                       env=trained["env"])
    assert one_error_line(result) == (
        f"error: out_dir={out} holds a trained run (ckpt.pt and best.pt) that train.resume=false would replace at its "
        "first evaluation: continue it with train.resume=auto, choose a new out_dir, or replace it with "
        "train.overwrite=true")
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_folder_holding_only_best_pt_is_not_overwritten_by_a_fresh_start(trained, tmp_path):
    out = copy_run(trained, tmp_path / "out")
    (out / "ckpt.pt").unlink()
    best = (out / "best.pt").read_bytes()
    result = run_entry("train.py", *trained["data"], f"out_dir={out}", cwd=trained["tmp"], env=trained["env"])
    assert "holds a trained run (best.pt) that train.resume=auto would replace" in one_error_line(result)
    assert (out / "best.pt").read_bytes() == best


def test_overwrite_true_replaces_the_trained_run_and_says_so(trained, tmp_path):
    out = copy_run(trained, tmp_path / "out")
    result = run_entry("train.py", *trained["data"], f"out_dir={out}", "train.resume=false", "train.overwrite=true",
                       "train.max_iters=10", cwd=trained["tmp"], env=trained["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"train.overwrite=true: this run replaces ckpt.pt and best.pt in {out}" in result.stdout
    assert load_checkpoint(out)["step"] == 10 and load_checkpoint(out, "best.pt")["step"] in (0, 10)


# --- write failures: one line, no debris ---------------------------------------------------------

def test_a_real_full_disk_at_a_save_is_one_line_and_keeps_the_last_checkpoint(trained, tmp_path):
    size = (trained["out"] / "ckpt.pt").stat().st_size
    out = tmp_path / "out"
    # room for the lock, tokenizer.json and one checkpoint, not for the temp file of a second one
    with small_tmpfs(out, f"{(size * 3 // 2) // 1024}k"):
        result = run_entry("train.py", *trained["data"], f"out_dir={out}", cwd=trained["tmp"], env=trained["env"])
        assert one_error_line(result) == (
            f"error: cannot write the checkpoint in {out} (No space left on device): free disk space or choose a "
            "writable out_dir; the checkpoints already there are unchanged")
        no_debris(out)
        # the step-0 file is small (no optimizer state yet), so step 15 still fit and step 30 did not
        assert load_checkpoint(out)["step"] == 15 and load_checkpoint(out, "best.pt")["step"] in (0, 15)


def test_a_second_ctrl_c_during_a_save_stops_at_once_without_a_temp_file(trained, tmp_path):
    out = tmp_path / "out"
    # a model whose checkpoint (~300 MB with AdamW's moments) takes long enough to write that both
    # signals land inside the step-0 save even on a loaded machine
    run = start(trained, out, "model.n_layer=8", "model.n_embd=512", "train.eval_windows=1")
    deadline = time.time() + 120
    while not list(out.glob(f".ckpt.pt.*{TEMP_SUFFIX}")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.002)
    run.send_signal(signal.SIGINT)
    time.sleep(0.02)  # the first is handled (a request to stop) before the second arrives
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: this run saved no checkpoint"
    no_debris(out)
    assert not (out / "ckpt.pt").exists()


def test_ctrl_c_during_the_final_evaluation_still_says_where_the_checkpoint_is(trained, tmp_path):
    out = copy_run(trained, tmp_path / "out")  # resumed at step 30, so only the final evaluation is long (~3 s)
    run = start(trained, out, "train.max_iters=40", "train.eval_windows=8000", "train.eval_interval=1000")
    for line in run.stdout:
        if line.startswith("step 40/40"):  # the last step's log line: the final evaluation starts right after it
            time.sleep(0.5)
            run.send_signal(signal.SIGINT)
            break
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-2000:]
    assert stderr.startswith("\nSIGINT: finishing this step")
    assert "done in " in stdout and f"checkpoint in {out / 'ckpt.pt'}" in stdout
    assert load_checkpoint(out)["step"] == 40


def test_ctrl_c_in_a_long_stream_of_sample_py_is_one_line(trained, tmp_path):
    run = subprocess.Popen([sys.executable, str(REPO / "sample.py"), f"out_dir={trained['out']}", "prompt=the",
                            "max_new_tokens=100000", "device=cpu"], cwd=tmp_path, env=trained["env"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    run.stdout.read(200)  # the stream has begun
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130
    assert stderr.decode().strip().splitlines() == ["interrupted: sampling stopped"]


# --- checkpoints are checked on load -------------------------------------------------------------

class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def damage(checkpoint: dict, kind: str, folder: Path) -> str:
    """Damage a copy of a good checkpoint in one way; return what the error must say."""
    if kind == "code":  # a pickle that would run code
        with open(folder / "ckpt.pt", "wb") as f:
            pickle.dump({"model": RunsCode(folder / "pwned")}, f)
        return "holds Python objects other than tensors and plain values, which could run code"
    weights, name = checkpoint["model"], "blocks.0.attn.W_Q.weight"
    if kind == "shape":
        weights[name] = weights[name][:-1]
        expected = f"{name} has shape"
    elif kind == "missing tensor":
        del weights[name]
        expected = f"misses {name}"
    elif kind == "unknown setting":
        checkpoint["model_config"]["n_experts"] = 8
        expected = "has unknown model settings (n_experts)"
    elif kind == "no model_config":
        del checkpoint["model_config"]
        expected = "has no model_config"
    else:
        weights[name][0, 0] = float("nan")
        expected = f"{name} holds NaN or inf values"
    torch.save(checkpoint, folder / "ckpt.pt")
    return expected


KINDS = ["shape", "missing tensor", "unknown setting", "no model_config", "nan", "code"]


@pytest.mark.parametrize("kind", KINDS)
def test_sample_refuses_a_damaged_checkpoint_by_name(trained, tmp_path, kind):
    out = copy_run(trained, tmp_path / "out")
    expected = damage(load_checkpoint(out), kind, out)
    result = run_entry("sample.py", f"out_dir={out}", "checkpoint=last", "max_new_tokens=5", cwd=tmp_path,
                       env=trained["env"])
    line = one_error_line(result)
    assert line.startswith(f"error: {out / 'ckpt.pt'}") and expected in line
    assert not (out / "pwned").exists()


@pytest.mark.parametrize("kind", ["nan", "no model_config"])  # sample.py tries every kind
def test_resume_refuses_a_damaged_checkpoint_by_name_and_keeps_it(trained, tmp_path, kind):
    out = copy_run(trained, tmp_path / "out")
    expected = damage(load_checkpoint(out), kind, out)
    before = (out / "ckpt.pt").read_bytes()
    result = run_entry("train.py", *trained["data"], f"out_dir={out}", "train.max_iters=40", cwd=trained["tmp"],
                       env=trained["env"])
    assert expected in one_error_line(result)
    assert (out / "ckpt.pt").read_bytes() == before and not (out / "pwned").exists()


@pytest.mark.parametrize("kind", ["missing tensor"])  # the same load_model as sample.py
def test_heads_report_refuses_a_damaged_checkpoint_by_name(trained, tmp_path, kind):
    out = copy_run(trained, tmp_path / "out")
    expected = damage(load_checkpoint(out), kind, out)
    result = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={out}", "device=cpu"], cwd=REPO,
                            env=trained["env"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert expected in one_error_line(result)
    assert not (out / "heads").exists()


def test_sample_piped_into_head_stops_with_one_line_when_the_pipe_closes(trained, tmp_path):
    sample = [sys.executable, str(REPO / "sample.py"), f"out_dir={trained['out']}", "prompt=the", "max_new_tokens=2000",
              "device=cpu", "stream=true"]
    result = subprocess.run(f"{' '.join(sample)} | head -c 20", shell=True, cwd=tmp_path, env=trained["env"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                            executable="/bin/bash")
    assert result.returncode == 0 and len(result.stdout) == 20  # head's
    assert result.stderr.strip().splitlines() == [
        "stopped: the program reading the output went away; sampling stopped"], result.stderr[-2000:]
