"""The folders this project writes into: one job at a time in each (folder_lock), files replaced whole
(atomic_write: a temp file of ours beside it, fsynced and renamed over the old one, so a crash, kill -9
or full disk mid-write leaves the old file whole), and only our own leftovers ever removed (remove_debris:
a user's `notes.tmp` in out_dir is theirs)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from common.errors import UserError

TEMP_SUFFIX = ".gpt-attention-tmp"  # what marks a file as our own temp file


def check_writable(out_dir: Path) -> None:
    """Fail before training, not at the first save, when out_dir cannot hold a checkpoint."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):  # a name of its own: two runs starting together never collide
            pass
    except OSError as e:
        raise UserError(f"out_dir={out_dir} is not a writable folder ({e.strerror or e}): "
                        "choose another out_dir or fix its permissions") from None


def holder(fd: int) -> str:
    """What the lock file says about the process holding it."""
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "another process"
    return "another process"


@contextlib.contextmanager
def folder_lock(folder: Path, setting: str, wait: bool = False) -> Iterator[None]:
    """Hold `folder`'s lock (an flock on `<folder>/.lock`, which the kernel drops however the process ends,
    so a stale lock never blocks a later run) for the body. Busy: a UserError naming the holder and
    `setting` (the key that picks the folder), or with `wait`, a line saying who is waited for."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError(f"{setting}={folder} is in use by {holder(fd)}: wait for that run to end, stop it, "
                                f"or choose another {setting}") from None
            print(f"waiting for {holder(fd)}, which is writing {folder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts): go on, but say so
            print(f"warning: cannot lock {folder} ({e.strerror or e}): nothing stops a second job from using it at "
                  "the same time", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)  # the lock file says who holds it, for the message the next job prints
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        command = command if len(command) <= 120 else command[:119] + "…"  # the message stays one readable line
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {started})".encode(), 0)
        remove_debris(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, of this process, recognisably ours."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write(path: Path, write: Callable[[BinaryIO], object], sync: bool = True) -> None:
    """Write `path` through write(file) into its temp_path, fsync (not for a file made again anyway), rename;
    whatever stops the write (an OSError, a second Ctrl-C), the temp file is removed and the old file stays."""
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
    """Our temp files that a killed job left behind, and only ours: safe only while holding the folder's lock."""
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
