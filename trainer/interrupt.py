"""Stopping a run: Ctrl-C or SIGTERM finishes the step and saves (GracefulStop), and the line
printed when a run is cut short names the checkpoint it left (LastSave)."""
from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.checkpoint import CHECKPOINT


class GracefulStop:
    """The first SIGINT or SIGTERM asks the loop to finish its step, save and exit 0; a second
    SIGINT stops at once (saves are atomic, so the last checkpoint stays loadable)."""

    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (press Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class LastSave:
    """Where the run's latest checkpoint is, for the line printed when the run is cut short."""

    out_dir: Path
    step: int | None = None

    def describe(self) -> str:
        if self.step is None:
            return "this run saved no checkpoint"
        return (f"the last checkpoint is {self.out_dir / CHECKPOINT} (step {self.step}); run the same command again "
                "to continue")
