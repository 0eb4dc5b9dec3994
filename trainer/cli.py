"""How every entry point ends (train.py, sample.py, python -m data.prepare, python -m heads.report):
a user error is one line on stderr and exit 2, Ctrl-C is one line and exit 130, a closed output
pipe (`python sample.py | head`) one line and exit 141, never a traceback."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from data.sources import DataError
from data.tokenizer import TokenizerError
from trainer.checkpoint import CheckpointError
from trainer.lock import FolderBusy
from trainer.runtime import ConfigError

# bad settings, inputs, checkpoints or a folder in use: the message names the culprit and the fix
USER_ERRORS = (ConfigError, DataError, TokenizerError, CheckpointError, FolderBusy)


def run_entry(job: Callable[[], object], interrupted: Callable[[], str] = lambda: "nothing was written") -> None:
    """Run `job`; on a user error print `error: <message>` and exit 2, on Ctrl-C print
    `interrupted: <interrupted()>` (what is on disk now) and exit 130, when stdout's reader went
    away (SIGPIPE's exit code) say so on stderr and exit 141."""
    try:
        job()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        print(f"stopped: the program reading the output went away; {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(141)
