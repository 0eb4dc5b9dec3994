"""wandb is never the reason training stops, the wrapper itself: a log entry that cannot be
written (a full disk) is one warning, and every later call does nothing. The faults a user meets
through the real train.py and python -m heads.report are in tests/test_wandb_faults_cli.py."""
from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

from common.wandb_run import WandbRun


class FakeRun:
    """What WandbRun uses of a wandb Run; counts the calls that reach it."""

    def __init__(self, folder: Path) -> None:
        self.sync_dir, self.offline = str(folder), True
        self.settings = SimpleNamespace(sync_file=str(folder / "run-x.wandb"))
        self.summary = SimpleNamespace(update=lambda metrics: self.calls.append("summary"))
        self.calls: list[str] = []

    def define_metric(self, name: str, hidden: bool) -> None:
        self.hidden = name if hidden else None  # the report's per-head scalars, hidden from the panels

    def log(self, entry: dict, step: int) -> None:
        self.calls.append(f"log {step}")

    def finish(self, exit_code: int) -> None:
        self.calls.append("finish")


def test_a_log_entry_that_cannot_be_written_is_warned_once_and_later_calls_do_nothing(tmp_path, capsys):
    fake = FakeRun(tmp_path / "offline-run-x")
    run = WandbRun(fake)
    run.log({"train/loss": 1.0}, step=1)
    built = []

    def entry() -> dict:  # building a wandb.Image writes a file
        built.append(True)
        raise OSError(errno.ENOSPC, "No space left on device")

    run.log(entry, step=2)
    run.log(entry, step=3)
    run.log({"train/loss": 0.5}, step=4)
    run.summary({"val/loss": 0.5})
    assert built == [True] and fake.calls == ["log 1"]
    assert not run.active
    err = capsys.readouterr().err
    assert err == (f"wandb: cannot write to {tmp_path / 'offline-run-x'} (No space left on device): logging to wandb "
                   "stops here, training and checkpoints go on without wandb\n")
    assert run.finish() == (f"wandb: run in {tmp_path / 'offline-run-x'} (offline: upload with "
                            f"`wandb sync {tmp_path / 'offline-run-x'}`)")
    assert fake.calls == ["log 1", "finish"] and run.finish() is None
    assert capsys.readouterr().err == ""  # the incomplete run file is not warned about twice
