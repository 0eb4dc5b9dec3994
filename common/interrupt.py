"""Stopping a run: Ctrl-C, SIGTERM or SIGHUP (a closed terminal or ssh session) finishes the step
and saves (GracefulStop); outside the training loop each is a KeyboardInterrupt, so what is half
written is removed and one line said (raise_interrupt, common/cli.py); the line printed when a run
is cut short names the checkpoint it left (trainer/checkpoint.py: LastSave)."""
from __future__ import annotations

import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_stop_signals(handler) -> dict:
    """Handle each stop signal with `handler`, except one the process ignores (SIGHUP under nohup
    stays ignored); return the previous handlers."""
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}


def raise_interrupt(signum, frame) -> None:
    """A stop signal as a KeyboardInterrupt naming it: common.cli.run_entry exits 128 + its number."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


class GracefulStop:
    """The first stop signal asks the loop to finish its step, save and exit 0; a second stops at
    once (saves are atomic, so the last checkpoint stays loadable)."""

    def __init__(self):
        self.requested = False
        self.previous = on_stop_signals(self.handle)

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise_interrupt(signum, frame)
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (press Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


