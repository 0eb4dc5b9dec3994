"""The folders this project writes into: one job at a time in each, files replaced whole, and
only our own leftovers removed.

- A lock (one training run per out_dir, one preparation per data folder) is an flock on
  `<folder>/.lock`, held for as long as the job runs. The kernel drops it when the process ends in
  any way (exit, crash, kill -9), so a stale lock never blocks a later run. The file also says who
  holds it (pid, host, command, start time), for the message the next job prints.
- A file is written to a temp file of this project and process beside it (`temp_path`: a hidden
  name ending in `.gpt-attention-tmp`), fsynced and renamed over the old one (`atomic_write`), so
  a crash, a kill -9, Ctrl-C or a full disk mid-write leaves the old file whole.
- Holding a folder's lock, any temp file of ours in it is debris of a killed job and is removed;
  nothing else is (a user's `notes.tmp` in out_dir is theirs).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from common.errors import UserError

LOCK = ".lock"
TEMP_SUFFIX = ".gpt-attention-tmp"  # what marks a file as our own temp file


def check_writable(out_dir: Path) -> None:
    """Fail before training, not at the first save, when out_dir cannot hold a checkpoint."""
    out_dir = Path(out_dir)
    probe = out_dir / f".write-test.{os.getpid()}"  # two runs starting together must not remove each other's
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir={out_dir} is not a writable folder ({e.strerror or e}): "
                              "choose another out_dir or fix its permissions") from None


class FolderBusy(UserError):
    """Another process holds the folder; the message names it and what to do."""


def holder(fd: int) -> str:
    """What the lock file says about the process holding it."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        if text:
            return text
    return "another process"


@contextlib.contextmanager
def folder_lock(folder: Path, setting: str, wait: bool = False) -> Iterator[None]:
    """Hold `folder`'s lock for the body (the folder is created when missing).

    Busy: raise FolderBusy naming the holder and `setting` (the key that picks the folder), or,
    with wait=True, say who is being waited for and block until the holder is done."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FolderBusy(f"{setting}={folder} is in use by {holder(fd)}: wait for that run to end, stop it, "
                                 f"or choose another {setting}") from None
            print(f"waiting for {holder(fd)}, which is writing {folder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts): go on, but say so
            print(f"warning: cannot lock {folder} ({e.strerror or e}): nothing stops a second job from using it at "
                  "the same time", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        command = command if len(command) <= 120 else command[:119] + "…"  # the message stays one readable line
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {started})".encode(), 0)
        remove_debris(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, of this process (two writers
    never share one), and recognisably ours."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write(path: Path, write: Callable[[BinaryIO], object], sync: bool = True) -> None:
    """Write `path` through write(file) into its temp_path, fsync (unless not `sync`: a file that
    is made again anyway), rename. The temp file is removed whatever stops the write (an OSError, a
    second Ctrl-C); the old file stays."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def remove_debris(folder: Path) -> None:
    """Our temp files that a killed job left behind (only ours); only safe while holding the folder's lock."""
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
