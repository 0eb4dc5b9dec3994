"""wandb is never the reason training stops, through the real train.py (or python -m heads.report)
in a child process, where a user would meet it: a full disk under out_dir/wandb, a wandb service
whose writer fails, a server that refuses or never answers. The wrapper's own unit test is in
tests/test_wandb_faults.py."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, small_tmpfs, tiny_args

from data.checkpoint import load_checkpoint
from common.wandb_run import run_file_complete

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the shape of a wandb API key


@pytest.fixture
def setup(tmp_path) -> dict:
    corpus = make_tiny_corpus(tmp_path / "corpus")
    args = [*tiny_args(corpus, tmp_path / 'prepared'),
            f"out_dir={tmp_path / 'out'}", "dtype=float32"]
    return {"tmp": tmp_path, "out": tmp_path / "out", "env": fresh_machine_env(tmp_path), "args": args}


def train(setup: dict, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_entry("train.py", *setup["args"], *extra, cwd=setup["tmp"], env=env or setup["env"])


def assert_trained_to_the_end(setup: dict, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert "done in " in result.stdout and "wandb: run in " in result.stdout
    for name in ("ckpt.pt", "best.pt"):
        assert load_checkpoint(setup["out"], name=name)["step"] == 30


def only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_a_full_disk_under_out_dir_wandb_is_one_warning_and_training_and_checkpoints_go_on(setup):
    # the attention report at step 15 writes ~280 KB of images into the run folder: 128 KB fill up
    with small_tmpfs(setup["out"] / "wandb", "128k") as wandb_dir:
        result = train(setup, "wandb.mode=offline", "wandb.attn_every=15")
        assert shutil.disk_usage(wandb_dir).free == 0  # the disk really was full
    assert_trained_to_the_end(setup, result)
    warning = only_line(result.stderr)
    assert warning.startswith(f"wandb: cannot write to {wandb_dir}/offline-run-")
    assert warning.endswith("(No space left on device): logging to wandb stops here, training and checkpoints go on "
                            "without wandb")
    # after the failure nothing would receive a report, so none is computed
    assert "eval step 30 (" in result.stdout and "attention report at step 30" not in result.stdout


def test_a_full_temp_folder_is_named_not_out_dir(setup):
    # wandb stages the report's HTML and tables in TMPDIR before it copies them into the run folder;
    # tempfile only takes a TMPDIR it can write a probe file into, so 16 kB are left free
    with small_tmpfs(setup["tmp"] / "tmpdir", "64k") as tmpdir:
        (tmpdir / "filler").write_bytes(b"x" * 48 * 1024)
        result = train(setup, "wandb.mode=offline", "wandb.attn_every=15", env={**setup["env"], "TMPDIR": str(tmpdir)})
    assert_trained_to_the_end(setup, result)
    assert only_line(result.stderr) == (f"wandb: cannot write to {tmpdir} (No space left on device): logging to wandb "
                                        "stops here, training and checkpoints go on without wandb")


def test_without_a_writable_home_the_caches_move_and_say_so_in_one_line(setup):
    env = {key: value for key, value in setup["env"].items() if not key.startswith(("WANDB_", "XDG_", "MPLCONFIG"))}
    env.pop("HOME", None)  # wandb's service and matplotlib would print a dozen lines each
    env["TMPDIR"] = str(setup["tmp"])  # where the caches go
    result = train(setup, "wandb.mode=offline", "wandb.pictures=inline", "train.max_iters=2", "train.eval_interval=2",
                   env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_line(result.stderr) == (f"warning: HOME is not set: caches and settings go to "
                                        f"{setup['tmp'] / f'gpt-attention-{os.getuid()}'} instead")
    assert list((setup["out"] / "wandb").glob("offline-run-*/files/media/images/attn_maps/*/*.png"))


def test_a_wandb_writer_that_fills_the_disk_is_one_warning_at_the_end_and_training_finishes(setup):
    # no report: only wandb's service writes (the run file), and it only says so in its own log
    with small_tmpfs(setup["out"] / "wandb", "16k") as wandb_dir:
        result = train(setup, "wandb.mode=offline", "wandb.attn_every=0")
        (run_dir,) = wandb_dir.glob("offline-run-*")
        complete = run_file_complete(next(run_dir.glob("run-*.wandb")))
    assert_trained_to_the_end(setup, result)
    assert not complete
    assert only_line(result.stderr) == (f"wandb: cannot write to {run_dir} (No space left on device): the offline "
                                        "run is incomplete; training and checkpoints are not affected")


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers: a firewall that drops packets, as wandb meets it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nothing ever reads or replies
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def refused_url() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def timed_train(setup: dict, *extra: str, env: dict) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
    """train.py, with the seconds after its start at which each stderr line arrived."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *setup["args"], *extra], cwd=setup["tmp"],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    arrived: dict[str, float] = {}
    lines: list[str] = []

    def read_stderr() -> None:
        for line in process.stderr:
            arrived.setdefault(line.rstrip("\n"), time.monotonic() - started)
            lines.append(line)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = process.stdout.read()
    process.wait(timeout=600)
    reader.join()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(lines)), arrived


def test_auto_mode_with_a_key_and_a_server_that_never_answers_goes_offline_after_15_s(setup, silent_server):
    env = {**setup["env"], "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": silent_server}
    result, arrived = timed_train(setup, "wandb.mode=auto", "wandb.attn_every=15", env=env)
    assert_trained_to_the_end(setup, result)
    line = only_line(result.stderr)
    host = silent_server.removeprefix("http://")
    (run_dir,) = (setup["out"] / "wandb").glob("offline-run-*")
    assert line == (f"wandb: cannot reach {host} (no answer in 15 s): logging offline to {run_dir}; "
                    "upload later with wandb sync")
    assert arrived[line] < 60  # not wandb's 90 s (+ a CommError): 15 s after a start of a few seconds
    assert run_file_complete(next(run_dir.glob("run-*.wandb")))
    assert not list((setup["out"] / "wandb").glob("run-*"))  # no half-made online run for `wandb sync` to find
    assert f"(offline: upload with `wandb sync {run_dir}`)" in result.stdout


def test_auto_mode_with_a_key_and_a_server_that_refuses_goes_offline(setup):
    url = refused_url()
    env = {**setup["env"], "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": url, "WANDB_INIT_TIMEOUT": "5"}
    result = train(setup, "wandb.mode=auto", "wandb.attn_every=0", env=env)
    assert_trained_to_the_end(setup, result)
    (run_dir,) = (setup["out"] / "wandb").glob("offline-run-*")
    assert only_line(result.stderr) == (f"wandb: cannot reach {url.removeprefix('http://')} (connection refused): "
                                        f"logging offline to {run_dir}; upload later with wandb sync")


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_online_mode_that_cannot_reach_the_server_is_one_error_line_and_exit_2(setup, silent_server, server):
    url = refused_url() if server == "refused" else silent_server
    env = {**setup["env"], "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": url, "WANDB_INIT_TIMEOUT": "5"}
    started = time.monotonic()
    result = train(setup, "wandb.mode=online", env=env)
    assert result.returncode == 2
    why = "connection refused" if server == "refused" else "no answer in 5 s"
    assert only_line(result.stderr) == (
        f"error: wandb.mode=online but wandb cannot reach {url.removeprefix('http://')} ({why}): check the network, "
        "the API key and WANDB_BASE_URL, or use wandb.mode=auto or offline (then `wandb sync` later)")
    assert "step 1/" not in result.stdout and not (setup["out"] / "ckpt.pt").exists()
    assert not list((setup["out"] / "wandb").glob("run-*"))
    assert time.monotonic() - started < 60  # nothing waits on wandb's telemetry after the error


def test_heads_report_with_a_full_wandb_disk_still_writes_its_files(setup):
    assert train(setup, "wandb.mode=disabled", "train.max_iters=5").returncode == 0
    report_dir = setup["tmp"] / "heads"
    with small_tmpfs(setup["out"] / "wandb", "128k") as wandb_dir:
        result = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={setup['out']}", "device=cpu",
                                 f"report_dir={report_dir}", "wandb=true"], cwd=REPO, env=setup["env"],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = only_line(result.stderr)
    assert warning.startswith(f"wandb: cannot write to {wandb_dir}/offline-run-")
    assert "(No space left on device)" in warning
    assert {"head_view.html", "metrics.json"} <= {p.name for p in report_dir.iterdir()}
    assert list(report_dir.glob("*.png")) and "wandb: run in " in result.stdout
