"""The Weights & Biases run: offline by itself when there is no API key, never a login prompt, and
never the reason training stops. Offline runs go to <out_dir>/wandb/ (`wandb sync` uploads them).
A server that does not answer within WANDB_INIT_TIMEOUT seconds: wandb.mode=auto goes on offline,
online is a ConfigError. A failure to log (a full disk, a dead wandb service) is one warning on
stderr, and training goes on without wandb."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from common.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")
HEAD_SCALARS = "val_heads"  # the attention report's per-head scalars: val_heads/<group>/L<l>H<h>/<metric>
INIT_TIMEOUT = 15  # seconds wandb.init waits for the server unless WANDB_INIT_TIMEOUT says (wandb's own default: 90)
FINISH_TIMEOUT = {"offline": 60.0, "online": 600.0}  # seconds run.finish may take before wandb gives up
SERVICE_STOP_TIMEOUT = 30.0  # seconds wandb's service may take to stop after run.finish


def setup_wandb() -> ModuleType:
    """wandb, set up for this process: nothing on stderr but our own lines, no error telemetry."""
    import wandb

    # wandb's error telemetry posts to the server from an exit hook: with the server out of reach
    # that holds the process ~20 s after the last line
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(INIT_TIMEOUT))  # an env default: the user's value wins
    # wandb's debug.log would print a "--- Logging error ---" traceback for each line it cannot write
    # (a full disk); such a disk is reported once, by WandbRun
    logging.raiseExceptions = False
    wandb.setup(wandb.Settings(silent=True))  # no "Loaded credentials" and alike on stderr
    return wandb


def has_api_key() -> bool:
    """Whether wandb finds an API key (WANDB_API_KEY, `wandb login`'s netrc, its settings), never prompting."""
    return setup_wandb().login(prompt=False, verify=False)


def reason(error: BaseException) -> str:
    """What went wrong in a few words: an OSError's reason, else the last clause of the first line of
    wandb's message ("...: connect: connection refused")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    first = str(error).strip().split("\n", 1)[0]
    return first.rsplit(": ", 1)[-1] if first not in ("", "<no message>") else type(error).__name__


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def stop_service() -> None:
    """wandb.teardown(): wandb's service writes the run file to its end and exits."""
    import wandb

    with contextlib.suppress(BaseException):  # incl. the SystemExit of a service that exited non-zero
        wandb.teardown()


def run_file_complete(path: Path) -> bool:
    """Whether wandb's own reader finds the run's exit record in its run file (run-<id>.wandb)."""
    try:
        read = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(path)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=True)
        return json.loads(read.stdout)["exit_code"] is not None
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return False


class WandbRun:
    """A wandb Run whose logging never raises: the first failure is one line on stderr, later calls do nothing."""

    def __init__(self, run) -> None:
        self.run = run
        self.folder = Path(run.sync_dir)
        self.offline = bool(run.offline)
        self.run_file = Path(run.settings.sync_file)  # run-<id>.wandb, written by wandb's service
        self.failure: str | None = None  # the warning, once something failed
        self.finished = False
        # the report's 100s of per-head scalars stay out of the default panels (its charts show them);
        # val_heads/ sorts after train/ and val/ in tools that ignore `hidden`, like `wandb leet`
        self.send(lambda: run.define_metric(f"{HEAD_SCALARS}/*", hidden=True))

    @property
    def active(self) -> bool:
        """False once logging failed or the run is finished: nothing is sent any more."""
        return self.failure is None and not self.finished

    def fail(self, error: BaseException | str,
             outcome: str = "logging to wandb stops here, training and checkpoints go on without wandb") -> None:
        """Warn once (error: an exception, or the reason a run file is incomplete) and log nothing more."""
        if self.failure is not None:
            return
        why, folder = error if isinstance(error, str) else reason(error), self.folder
        if isinstance(error, OSError):
            # the folder of the file it names (a copy's destination), else the fuller of the run's folder and
            # the temp folder, where wandb stages tables and HTML before it copies them into the run
            named = error.filename2 or error.filename
            folder = (min((self.folder, Path(tempfile.gettempdir())), key=free_bytes) if not named
                      else self.folder if self.folder in Path(named).parents else Path(named).parent)
        wrote = isinstance(error, (str, OSError))
        self.failure = f"wandb: {'cannot write to' if wrote else 'cannot log to'} {folder} ({why}): {outcome}"
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
        """run.log(entry, step=step); a callable entry is built inside the guard (a wandb.Image writes a file)."""
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
        # service has stopped, it has. A service that hangs is left to exit with this process.
        stopping = threading.Thread(target=stop_service, daemon=True)
        stopping.start()
        stopping.join(SERVICE_STOP_TIMEOUT)
        # a service that could not write the run file (a full disk) tells only its own log: read the file back
        if self.failure is None and self.offline and not run_file_complete(self.run_file):
            full = free_bytes(self.folder) < 2**20
            self.fail(os.strerror(errno.ENOSPC) if full else f"{self.run_file.name} does not reach the run's end",
                      "the offline run is incomplete; training and checkpoints are not affected")
        return f"wandb: run in {self.folder}" + (
            f" (offline: upload with `wandb sync {shlex.quote(str(self.folder))}`)" if self.offline else "")


def start_run(mode: str, project: str, name: str | None, config: dict, out_dir: Path) -> WandbRun | None:
    """A WandbRun for wandb.mode `mode` (one of MODES, checked by the setting), or None when it is disabled
    (nothing is written) or when not even an offline run can start in out_dir (one warning)."""
    requested = mode
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
    elif mode == "online" and not has_api_key():
        raise ConfigError("wandb.mode=online but no wandb API key is set: run `wandb login` or set WANDB_API_KEY, "
                          "or use wandb.mode=offline (then `wandb sync` later)")
    if mode == "disabled":
        return None
    wandb = setup_wandb()

    def init(mode: str):
        return wandb.init(project=project, name=name, config=config, mode=mode, dir=str(out_dir),
                          settings=wandb.Settings(console="off", silent=True, finish_timeout=FINISH_TIMEOUT[mode]))

    wandb_dir = Path(out_dir) / "wandb"
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if mode == "offline":
            return WandbRun(init("offline"))
        before = set(wandb_dir.glob("run-*"))
        try:
            return WandbRun(init("online"))
        except Exception as e:  # noqa: BLE001 - CommError, AuthenticationError, ...
            settings = wandb.setup().settings
            host = urlparse(settings.base_url).netloc or settings.base_url
            why = f"no answer in {settings.init_timeout:g} s" if "deadline exceeded" in str(e) else reason(e)
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
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - out_dir/wandb cannot be written: train without wandb
        print(f"wandb: cannot write to {wandb_dir} ({reason(e)}): training and checkpoints go on without wandb",
              file=sys.stderr, flush=True)
        return None
