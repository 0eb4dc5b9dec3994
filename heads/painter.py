"""Drawing a report's pictures: matplotlib turns each one into a PNG file, here or in a worker process.

On a GPU the report's numbers take well under a second, and drawing its dozens of heatmaps takes
seconds of host time in which the GPU would sit idle; so there a worker process draws them while
training goes on, and the PNGs are logged when they are ready (at a later step, captioned with the
report's own). On a CPU a worker would take a core from training, so they are drawn in place.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from matplotlib.figure import Figure

Picture = Callable[[], Figure]  # draws one figure: a functools.partial of heads.plots' functions, so it pickles
DPI = 90  # heads/plots.py sizes every label for this


def paint(pictures: dict[str, Picture], folder: Path) -> dict[str, Path]:
    """Draw each picture into folder as a PNG; key -> file (a key's '/' becomes '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, picture in pictures.items():
        files[key] = folder / (key.replace("/", "_") + ".png")
        picture().savefig(files[key], format="png", dpi=DPI)
    return files


def paint_in_worker(pictures: dict[str, Picture], folder: Path) -> dict[str, Path]:
    """paint(), in the worker: Ctrl-C reaches the whole process group, and the trainer, not the
    worker, decides what it means. Set per task, once its pictures are unpickled: importing what
    they need may install a handler of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return paint(pictures, folder)


class Painter:
    """Pictures in, PNG files out: `submit` a report's pictures, collect them with `ready`."""

    def __init__(self, background: bool):
        self.folder = Path(tempfile.gettempdir()) / f"attention-pictures-{os.getpid()}-{id(self):x}"
        self.pool = (ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                     if background else None)
        self.pending: list[tuple[int, Future]] = []

    def submit(self, step: int, pictures: dict[str, Picture]) -> None:
        folder = self.folder / str(step)
        if self.pool is not None:
            try:
                self.pending.append((step, self.pool.submit(paint_in_worker, pictures, folder)))
                return
            except BrokenProcessPool:  # the worker died (killed, out of memory): draw here from now on
                print("warning: the process drawing the attention pictures has died; they are drawn in this "
                      "process from now on", file=sys.stderr, flush=True)
                self.pool = None
        done: Future = Future()
        try:
            done.set_result(paint(pictures, folder))
        except Exception as e:  # noqa: BLE001 - a picture that cannot be drawn is reported, not raised
            done.set_exception(e)
        self.pending.append((step, done))

    def ready(self, wait: bool = False, limit: int | None = None) -> list[tuple[int, dict[str, Path] | BaseException]]:
        """(report step, its key -> PNG file, or why they could not be drawn) of the reports whose
        pictures are drawn, oldest first, at most `limit`; with wait, of every report submitted. Their
        files stay until `release`d (the caller logs them first)."""
        taken = []
        while self.pending and (limit is None or len(taken) < limit) and (wait or self.pending[0][1].done()):
            step, future = self.pending.pop(0)
            try:
                taken.append((step, future.result()))
            except Exception as e:  # noqa: BLE001 - e.g. a full disk, or the worker was killed
                taken.append((step, e))
        return taken

    def release(self, step: int) -> None:
        """Delete the files of the report at `step` (logged, or skipped)."""
        shutil.rmtree(self.folder / str(step), ignore_errors=True)

    def close(self) -> None:
        """Stop the worker (pictures not yet drawn are dropped) and delete the files."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
