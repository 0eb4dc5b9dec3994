"""Exclusive folder locks: one training run per out_dir, one preparation per data folder.

A lock is an flock on `<folder>/.lock`, held for as long as the job runs. The kernel drops it when
the process ends in any way (exit, crash, kill -9), so a stale lock never blocks a later run. The
file also says who holds it (pid, host, command, start time), for the message the next job prints.
Holding the lock also means that any `*.tmp` file in the folder is debris of a killed job.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"


class FolderBusy(Exception):
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


def remove_debris(folder: Path) -> None:
    """Temp files a killed job left behind; only safe while holding the folder's lock."""
    for path in folder.glob("*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()
