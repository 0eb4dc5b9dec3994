"""Drawing a report's pictures: matplotlib turns each one into a PNG file, here or in a worker process.

On a GPU the report's numbers take well under a second, and drawing its dozens of heatmaps takes
seconds of host time in which the GPU would sit idle; so there a worker process draws them while
training goes on, and the PNGs are logged when they are ready (at a later step, captioned with the
report's own). The final report's, which the run waits for, are split over several workers, one
per core up to FINAL_WORKERS. On a CPU a worker would take a core from training, so they are drawn
in place, and by default only the final report's (wandb.pictures, report.TrainingReports).
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
from functools import partial
from pathlib import Path

from matplotlib.figure import Figure

from common.folders import atomic_write

Picture = Callable[[], Figure]  # draws one figure: a functools.partial of heads.plots' functions, so it pickles
DPI = 90  # heads/plots.py sizes every label for this
FINAL_WORKERS = 8  # processes that may draw the final report's pictures at once (more: spawning outweighs it)


def paint(pictures: dict[str, Picture], folder: Path) -> dict[str, Path]:
    """Draw each picture into folder as a PNG, whole or not at all (a full disk leaves no empty
    file); key -> file (a key's '/' becomes '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, picture in pictures.items():
        files[key] = folder / (key.replace("/", "_") + ".png")
        # zlib's fastest level: a tenth of the drawing time saved for PNGs a quarter larger; no fsync:
        # a picture lost to a power cut is drawn again
        atomic_write(files[key], partial(picture().savefig, format="png", dpi=DPI, pil_kwargs={"compress_level": 1}),
                     sync=False)
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
        # workers start when a task finds none idle: one while training, more for a spread report
        self.workers = max(1, min(FINAL_WORKERS, os.cpu_count() or 1))
        self.pool = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                     if background else None)
        self.pending: list[tuple[int, list[Future]]] = []

    def submit(self, step: int, pictures: dict[str, Picture], spread: bool = False) -> None:
        """Draw a report's pictures, in the background or here. spread (the final report, which the
        run waits for): split them over the pool's workers instead of one."""
        folder = self.folder / str(step)
        if self.pool is not None:
            items = list(pictures.items())
            parts = [dict(items[i::self.workers]) for i in range(min(self.workers, len(items)))] if spread else [pictures]
            try:
                self.pending.append((step, [self.pool.submit(paint_in_worker, part, folder) for part in parts]))
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
        self.pending.append((step, [done]))

    def ready(self, wait: bool = False, limit: int | None = None) -> list[tuple[int, dict[str, Path] | BaseException]]:
        """(report step, its key -> PNG file, or why they could not be drawn) of the reports whose
        pictures are drawn, oldest first, at most `limit`; with wait, of every report submitted. Their
        files stay until `release`d (the caller logs them first)."""
        taken = []
        while (self.pending and (limit is None or len(taken) < limit)
               and (wait or all(future.done() for future in self.pending[0][1]))):
            step, futures = self.pending.pop(0)
            try:
                taken.append((step, {key: path for future in futures for key, path in future.result().items()}))
            except Exception as e:  # noqa: BLE001 - e.g. a full disk, or the worker was killed
                taken.append((step, e))
        return taken

    def release(self, step: int) -> None:
        """Delete the files of the report at `step` (logged, or skipped)."""
        shutil.rmtree(self.folder / str(step), ignore_errors=True)

    def close(self) -> None:
        """Stop the workers (pictures not yet drawn are dropped) and delete the files."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
