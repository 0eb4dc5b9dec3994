"""The Weights & Biases run: offline by itself when there is no API key, never a login prompt,
and never the reason training stops.

wandb.mode: auto (online with an API key, else offline) | online | offline | disabled.
Offline runs are written under <out_dir>/wandb/ and can be uploaded later with `wandb sync`.

A server that does not answer within WANDB_INIT_TIMEOUT seconds (default 15): in auto mode the run
goes on offline and says so in one line; in online mode it is a ConfigError (`error: ...`, exit 2).
Once a run is started, a failure to log (a full disk under out_dir/wandb, a wandb service that
died) is one warning on stderr; wandb is dropped for the rest of the run, training and
checkpoints go on.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import netrc
import os
import shlex
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from common.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")
HEAD_SCALARS = "val_heads"  # the attention report's per-head scalars: val_heads/<group>/L<l>H<h>/<metric>
INIT_TIMEOUT = 15.0  # seconds wandb.init waits for the server (wandb's own default is 90)
FINISH_TIMEOUT = {"offline": 60.0, "online": 600.0}  # seconds run.finish may take before wandb gives up
SERVICE_STOP_TIMEOUT = 30.0  # seconds wandb's service may take to stop after run.finish


def has_api_key() -> bool:
    """An API key in WANDB_API_KEY or in the netrc file that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"wandb.mode={mode!r} must be one of {', '.join(MODES)}")
    if mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
    if mode == "online" and not has_api_key():
        raise ConfigError(
            "wandb.mode=online but no wandb API key is set: run `wandb login` or set WANDB_API_KEY, "
            "or use wandb.mode=offline (then `wandb sync` later)"
        )
    return mode


def init_timeout() -> float:
    """WANDB_INIT_TIMEOUT when set to a positive number of seconds, else INIT_TIMEOUT."""
    try:
        value = float(os.environ.get("WANDB_INIT_TIMEOUT", ""))
    except ValueError:
        return INIT_TIMEOUT
    return value if value > 0 else INIT_TIMEOUT


def reason(error: BaseException, timeout: float | None = None) -> str:
    """What went wrong, in a few words: the OS reason of an OSError, the last clause of a wandb error."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines and lines[0] != "<no message>" else ""
    if not text:
        return type(error).__name__
    if timeout is not None and ("deadline exceeded" in text or text.startswith("Timed out initializing")):
        return f"no answer in {timeout:g} s"
    return text.rsplit(": ", 1)[-1]


def wandb_log_files() -> list[logging.FileHandler]:
    """The handlers of wandb's own log files (<run>/logs/debug.log). On a full disk each of their messages
    would print a "--- Logging error ---" traceback: they fail quietly instead."""
    handlers = [h for h in logging.getLogger("wandb").handlers if isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.handleError = lambda record: None
    return handlers


def close_wandb_log_files() -> None:
    """Stop writing wandb's own log files (debug.log)."""
    for handler in wandb_log_files():
        logging.getLogger("wandb").removeHandler(handler)
        with contextlib.suppress(Exception):  # the file may be on the full disk
            handler.close()


def stop_service(timeout: float) -> bool:
    """wandb.teardown(): stop wandb's service process, which closes the run files; False when it did not
    stop within `timeout` seconds (it is left behind and exits with this process)."""
    import wandb

    def teardown() -> None:
        with contextlib.suppress(BaseException):  # incl. the SystemExit of a service that exited non-zero
            wandb.teardown()

    thread = threading.Thread(target=teardown, name="wandb-teardown", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def run_file_complete(path: Path) -> bool:
    """Whether a run's transaction log (run-<id>.wandb) reads to its end and ends with the exit record,
    as wandb's writer leaves it after run.finish(). Its format: a 7-byte header, then 32 KiB blocks of
    records, each a 7-byte header (crc32, length, kind: 1 whole, 2 first, 3 middle, 4 last part) and
    a serialized wandb Record."""
    from wandb.proto import wandb_internal_pb2

    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:7] != b":W&B\xe1\xbe\x00":
        return False
    block, pos, last, pending = 32768, 7, None, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length or kind not in (1, 2, 3, 4):
            return False
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            last, pending = pending, b""
    if last is None or pos != len(data):
        return False
    record = wandb_internal_pb2.Record()
    try:
        record.ParseFromString(last)
    except Exception:  # noqa: BLE001 - a damaged record
        return False
    return record.WhichOneof("record_type") == "exit"


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def writer_error(folder: Path) -> str | None:
    """The last error of wandb's writer in the run's debug-internal.log ("no space left on device"), if any."""
    try:
        with open(folder / "logs" / "debug-internal.log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"ERROR"' in line and "writer" in line:
            try:
                why = json.loads(line)["msg"].rsplit(": ", 1)[-1]
            except (ValueError, KeyError, AttributeError):
                continue
            return why[:1].upper() + why[1:]  # Go's "no space left on device" as Python's strerror says it
    return None


class WandbRun:
    """A wandb Run whose logging never raises: the first failure is one line on stderr, later calls do nothing."""

    def __init__(self, run) -> None:
        self.run = run
        self.folder = Path(run.sync_dir)
        self.offline = bool(run.offline)
        self.run_file = Path(run.settings.sync_file)  # run-<id>.wandb, written by wandb's service
        self.failure: str | None = None  # the warning, once something failed
        self.finished = False
        wandb_log_files()  # quiet from the start: a full disk is reported once, by this class
        # the attention report's per-head scalars (100s) stay out of the default panels: its charts
        # show them, a line per head; the API still reads them. Named val_heads/ (they are measured
        # on validation windows) so that tools listing metrics by name, like `wandb leet`, which
        # ignores `hidden`, list train/ and val/ before them
        self.send(lambda: run.define_metric(f"{HEAD_SCALARS}/*", hidden=True))

    @property
    def active(self) -> bool:
        """False once logging failed or the run is finished: nothing is sent any more."""
        return self.failure is None and not self.finished

    def fail(self, error: BaseException | str,
             outcome: str = "logging to wandb stops here, training and checkpoints go on without wandb") -> None:
        """Warn once (error: an exception, or the reason in words) and log nothing more."""
        if self.failure is not None:
            return
        wrote = isinstance(error, (str, OSError))  # a str is the writer's reason, from wandb's service
        why = error if isinstance(error, str) else reason(error)
        folder = self.folder
        if isinstance(error, OSError):
            # the folder of the file it names (a copy's destination), else the fuller of the run's folder and
            # the temp folder, where wandb stages tables and HTML before it copies them into the run
            named = error.filename2 or error.filename
            folder = (min((self.folder, Path(tempfile.gettempdir())), key=free_bytes) if not named
                      else self.folder if self.folder in Path(named).parents else Path(named).parent)
        self.failure = f"wandb: {'cannot write to' if wrote else 'cannot log to'} {folder} ({why}): {outcome}"
        close_wandb_log_files()
        print(self.failure, file=sys.stderr, flush=True)

    def send(self, call: Callable[[], object]) -> None:
        """call() while the run is active; its first failure is warned once and ends the logging."""
        if not self.active:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 - logging is never a reason to stop training
            self.fail(e)

    def log(self, entry: dict | Callable[[], dict], step: int) -> None:
        """run.log(entry, step=step); a callable is called here first, inside the guard (wandb.Image and
        the like write files into the run folder)."""
        self.send(lambda: self.run.log(entry() if callable(entry) else entry, step=step))

    def summary(self, metrics: dict) -> None:
        self.send(lambda: self.run.summary.update(metrics))

    def finish(self, exit_code: int = 0) -> str | None:
        """Close the run; the line to print about where it is (None when called again)."""
        if self.finished:
            return None
        self.finished = True
        try:
            self.run.finish(exit_code=exit_code)  # bounded by FINISH_TIMEOUT on the wandb side
        except Exception as e:  # noqa: BLE001
            self.fail(e)
        # run.finish() returns before wandb's service has written the run file to its end; once the
        # service has stopped, it has. A writer that failed there (a full disk) says so only in its own log.
        stopped = stop_service(SERVICE_STOP_TIMEOUT)
        if self.failure is None and self.offline and not run_file_complete(self.run_file):
            why = (writer_error(self.folder)
                   or (os.strerror(errno.ENOSPC) if free_bytes(self.folder) < 2**20 else None)
                   or (f"wandb's service did not stop within {SERVICE_STOP_TIMEOUT:g} s" if not stopped else None)
                   or f"{self.run_file.name} is incomplete")
            self.fail(why, "the offline run is incomplete; training and checkpoints are not affected")
        return f"wandb: run in {self.folder}" + (
            f" (offline: upload with `wandb sync {shlex.quote(str(self.folder))}`)" if self.offline else "")


def start_run(mode: str, project: str, name: str | None, config: dict, out_dir: Path) -> WandbRun | None:
    """A WandbRun, or None when mode is disabled (then nothing is written) or when not even an offline
    run can be started in out_dir (one warning, training goes on)."""
    requested, mode = mode, resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    # wandb's own error telemetry posts to the server from an exit hook: with the server out of reach
    # that holds the process ~20 s after the last line; it is off unless asked for.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    wandb.setup(wandb.Settings(silent=True))  # no "Loaded credentials" and alike on stderr
    timeout = init_timeout()

    def init(mode: str):
        return wandb.init(
            project=project,
            name=name,
            config=config,
            mode=mode,
            dir=str(out_dir),
            settings=wandb.Settings(console="off", silent=True, init_timeout=timeout,
                                    finish_timeout=FINISH_TIMEOUT[mode]),
        )

    wandb_dir = Path(out_dir) / "wandb"
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if mode == "online":
            before = set(wandb_dir.glob("run-*"))
            try:
                return WandbRun(init("online"))
            except Exception as e:  # noqa: BLE001 - CommError, AuthenticationError, ...
                host = urlparse(wandb.setup().settings.base_url).netloc or wandb.setup().settings.base_url
                why = reason(e, timeout)
                for failed in set(wandb_dir.glob("run-*")) - before:  # the attempt's folder: `wandb sync` would
                    shutil.rmtree(failed, ignore_errors=True)          # make a second, empty run of it
                if requested == "online":
                    raise ConfigError(
                        f"wandb.mode=online but wandb cannot reach {host} ({why}): check the network, the API key "
                        "and WANDB_BASE_URL, or use wandb.mode=auto or offline (then `wandb sync` later)") from None
                run = WandbRun(init("offline"))
                print(f"wandb: cannot reach {host} ({why}): logging offline to {run.folder}; "
                      f"upload later with wandb sync", file=sys.stderr, flush=True)
                return run
        return WandbRun(init("offline"))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - out_dir/wandb cannot be written: train without wandb
        close_wandb_log_files()
        print(f"wandb: cannot write to {wandb_dir} ({reason(e)}): training and checkpoints go on without wandb",
              file=sys.stderr, flush=True)
        return None
