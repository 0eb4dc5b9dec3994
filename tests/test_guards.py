"""common/cli.py's guards of a process, in this process: output that never stops a job, a stop
signal as one line, caches moved off an unwritable HOME, and a write that found no room named.
Through the real entry points: tests/test_output_cli.py and the *_faults_cli.py modules."""
from __future__ import annotations

import errno
import io
import os
import signal

import pytest

from common.cli import Output, OutputError, no_room, run_entry, usable_caches
from common.cli import on_stop_signals, raise_interrupt


class Failing(io.StringIO):
    """A stream whose writes fail as a full disk's or a closed pipe's do."""

    def __init__(self, error: OSError):
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def fileno(self) -> int:
        raise ValueError("no file")  # dup2 to /dev/null is skipped


def test_characters_the_output_cannot_show_are_escaped_and_said_once(capsys):
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    out = Output(ascii_out, "stdout")
    for text in ("国王 → king\n", "中国\n"):
        out.write(text)
    out.flush()
    assert ascii_out.buffer.getvalue() == b"\\u56fd\\u738b \\u2192 king\n\\u4e2d\\u56fd\n"
    assert capsys.readouterr().err.count("note: stdout is ascii: characters it cannot show") == 1


def test_a_log_that_cannot_be_written_is_one_warning_and_the_job_goes_on(capsys):
    out = Output(Failing(OSError(errno.ENOSPC, "No space left on device")), "stdout")
    for _ in range(3):
        assert out.write("step 10 | loss 2.0\n") == len("step 10 | loss 2.0\n")
    out.flush()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot write to stdout (")
    assert err[0].endswith(": No space left on device): its lines are dropped from here on; the job goes on")


def test_a_result_that_cannot_be_written_stops_the_command():
    with pytest.raises(OutputError, match=r"cannot write the output to .* \(No space left on device\)"):
        Output(Failing(OSError(errno.ENOSPC, "No space left on device")), "stdout", result=True).write("sample")
    with pytest.raises(BrokenPipeError):  # run_entry's exit 141
        Output(Failing(BrokenPipeError(errno.EPIPE, "Broken pipe")), "stdout", result=True).write("sample")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_outside_the_training_loop_is_one_line_and_its_exit_code(capsys, signum, code):
    previous = on_stop_signals(raise_interrupt)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_entry(lambda: os.kill(os.getpid(), signum), interrupted=lambda: "nothing was replaced")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert stopped.value.code == code
    assert capsys.readouterr().err.strip() == f"stopped by {signal.Signals(signum).name}: nothing was replaced"


def test_an_ignored_sighup_stays_ignored():  # nohup python train.py: a closed terminal must not stop it
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        handlers = on_stop_signals(raise_interrupt)
        assert signal.SIGHUP not in handlers and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_caches_that_cannot_live_under_home_go_to_a_temp_folder_said_once(monkeypatch, tmp_path, capsys):
    for var in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    usable_caches()
    base = tmp_path / f"gpt-attention-{os.getuid()}"
    assert os.environ["XDG_CACHE_HOME"] == str(base / "xdg_cache_home")
    assert os.environ["WANDB_DATA_DIR"] == str(base / "wandb_data_dir")
    assert capsys.readouterr().err == f"warning: HOME is not set: caches and settings go to {base} instead\n"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var)
    usable_caches()  # a writable HOME: nothing moves, nothing said
    assert "XDG_CACHE_HOME" not in os.environ and capsys.readouterr().err == ""


def test_a_write_that_found_no_room_is_named_through_the_exceptions_that_wrap_it():
    full = OSError(errno.ENOSPC, "No space left on device", "/mnt/full/part.bin")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("a library's own words")  # noqa: B904 - wrapped as libraries wrap it
    except RuntimeError as wrapped:
        assert no_room(wrapped) == ("cannot write /mnt/full/part.bin (No space left on device): free space there or "
                                    "choose a folder with room")
    copy = OSError(errno.EDQUOT, "Disk quota exceeded", "/tmp/source.png", None, "/mnt/full/copy.png")
    assert no_room(copy).startswith("cannot write /mnt/full/copy.png (Disk quota exceeded)")  # a copy's destination
    assert no_room(OSError(errno.ENOENT, "No such file or directory", "x")) is None  # not a write that found no room
    assert no_room(ValueError("bad")) is None
