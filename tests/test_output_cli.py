"""Output that never stops a job, and a closed terminal, through the real entry points: stdout on a
full disk, a terminal or file that cannot show UTF-8, a closed ssh session (stdout gone, then
SIGHUP). The guards themselves, in this process: tests/test_guards.py."""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, tiny_args

from data.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny run whose out_dir has a space and Chinese in its name, trained with a stdout that can
    only carry ASCII (PYTHONIOENCODING=ascii, as a cp1252 console or an old terminal)."""
    tmp = tmp_path_factory.mktemp("output")
    corpus = make_tiny_corpus(tmp / "corpus")
    env = fresh_machine_env(tmp)
    args = [*tiny_args(corpus, tmp / "prepared"), "dtype=float32", "wandb.attn_every=0"]
    out = tmp / "我的 runs"
    result = run_entry("train.py", *args, f"out_dir={out}", "wandb.mode=offline", "train.max_iters=2",
                       cwd=tmp, env={**env, "PYTHONIOENCODING": "ascii"})
    return {"tmp": tmp, "env": env, "args": args, "out": out, "result": result}


def test_a_terminal_without_utf8_gets_escapes_not_a_traceback(trained):
    result = trained["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    escaped = str(trained["out"]).encode("ascii", "backslashreplace").decode()
    assert f"checkpoint in {escaped}/ckpt.pt" in result.stdout
    assert result.stderr.count("note: stdout is ascii: characters it cannot show are written as \\u escapes") == 1
    sampled = run_entry("sample.py", f"out_dir={trained['out']}", "prompt=中国", "max_new_tokens=2", "device=cpu",
                        "checkpoint=last", cwd=trained["tmp"], env={**trained["env"], "PYTHONIOENCODING": "ascii"})
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert sampled.stdout.splitlines()[0] == "--- sample 1/1 (prompt '\\u4e2d\\u56fd') ---"


def test_the_wandb_sync_hint_is_a_command_that_runs_as_printed(trained):
    (run_dir,) = (trained["out"] / "wandb").glob("offline-run-*")
    hint = next(line for line in trained["result"].stdout.splitlines() if "wandb sync" in line)
    escaped = shlex.quote(str(run_dir)).encode("ascii", "backslashreplace").decode()
    assert f"upload with `wandb sync {escaped}`" in hint  # quoted: the folder name has a space


def test_samples_that_cannot_be_written_are_one_error_line(trained):
    with open("/dev/full", "w") as full:  # every write: No space left on device
        result = subprocess.run([sys.executable, str(REPO / "sample.py"), f"out_dir={trained['out']}", "checkpoint=last",
                                 "max_new_tokens=2", "device=cpu"], cwd=trained["tmp"], env=trained["env"], stdout=full,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: cannot write the output to /dev/full (No space left on device): free space there, or send it elsewhere")


def test_a_closed_ssh_session_saves_the_run(trained):
    """stdout to a full disk, then SIGHUP (the session closed): training goes on past the failed log
    line, the hangup finishes the step and saves, exit 0."""
    out = trained["tmp"] / "hangup"
    with open("/dev/full", "w") as full:
        run = subprocess.Popen([sys.executable, str(REPO / "train.py"), *trained["args"], f"out_dir={out}",
                                "wandb.mode=disabled", "train.max_iters=100000", "train.eval_interval=50"],
                               cwd=trained["tmp"], env=trained["env"], stdout=full, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (out / "ckpt.pt").exists() and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)  # the step-0 save: training has started, and stdout has failed long before
        time.sleep(1.0)
        run.send_signal(signal.SIGHUP)
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line]  # the signal's line starts on a fresh one
    assert lines[0] == ("warning: cannot write to stdout (/dev/full: No space left on device): its lines are dropped "
                        "from here on; the job goes on")
    assert lines[1:] == ["SIGHUP: finishing this step, then saving (press Ctrl-C again to stop now)"]
    assert load_checkpoint(out)["step"] > 0
