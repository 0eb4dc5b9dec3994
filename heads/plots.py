"""The report's pictures: each layer's heads as heatmaps per probe, an L x H heatmap per metric,
their token labels, and drawing them into PNGs, here or in worker processes (heads/README.md).
wandb shows the PNGs 500-800 px wide, so every size is in points for DPI (labels 9 pt: 11 px),
and figures are laid out by hand in inches (constrained layout would measure every label first).
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.transforms import offset_copy

from common.folders import atomic_write

Picture = Callable[[], Figure]  # draws one figure: a functools.partial of this module's functions, so it pickles
DPI = 90  # every size here is set for PNGs saved at this
LATIN_FONT, CJK_FONT = "DejaVu Sans", "Noto Sans CJK SC"
FONT = 9  # pt of every label: 11 px in a PNG saved at DPI
LINE = 1.2 * FONT / 72  # inches per line of labels
PITCH = 11 / 72  # inches per token on both axes of a heatmap: one 9 pt label with a little air
MAX_TOKENS_SHOWN = 32  # a heatmap is at most this many pitches wide; longer probes label every k-th token
MAX_COLS = 3  # heatmaps per row: 3 x 32 tokens at PITCH keeps a 6-head layer under 1600 px at DPI
CHANCE_MARGIN = 0.05  # metric cells within this fraction of the colour scale of the baseline count as chance
FINAL_WORKERS = 8  # processes that may draw the final report's pictures at once (more: spawning outweighs it)
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_texts(token_bytes: list[bytes]) -> list[str]:
    """One label per token: its text, or the smallest run of tokens that decodes with i/n: '中文(1/2)'.
    A CJK character is three bytes, often split over tokens; a label never shows U+FFFD."""
    labels: list[str] = []
    start = 0
    while start < len(token_bytes):
        end, text = start, None
        while text is None and end < len(token_bytes):
            end += 1
            try:
                text = b"".join(token_bytes[start:end]).decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":  # no byte after it can repair this one
                    break
        if text is None:  # bytes that never become valid UTF-8: show them as hex
            labels.append(" ".join(f"{b:02x}" for b in token_bytes[start]))
            start += 1
        else:
            labels += [text] if end - start == 1 else [f"{text}({i + 1}/{end - start})" for i in range(end - start)]
            start = end
    return labels


def visible(text: str, drawable: Callable[[str], bool] = lambda ch: True) -> str:
    """Whitespace as visible symbols; characters no font can draw as U+XXXX."""
    return "".join(VISIBLE.get(ch) or (ch if drawable(ch) else f"U+{ord(ch):04X}") for ch in text)


@functools.cache
def latin_code_points() -> frozenset[int]:
    """What DejaVu Sans, matplotlib's bundled font, draws; the head view embeds a font for the rest."""
    return frozenset(FT2Font(font_manager.findfont(LATIN_FONT, fallback_to_default=False)).get_charmap())


@functools.cache
def setup_fonts() -> frozenset[int]:
    """Make matplotlib fall back to Noto Sans CJK; every code point the two fonts draw (labels write
    the rest as U+XXXX, so no missing-glyph warning is raised)."""
    import noto_cjk_sans_otc

    cjk_path = str(noto_cjk_sans_otc.FONT_PATH)
    font_manager.fontManager.addfont(cjk_path)
    matplotlib.rcParams["font.family"] = [LATIN_FONT, CJK_FONT]
    return latin_code_points() | frozenset(FT2Font(cjk_path).get_charmap())


def drawable_labels(labels: list[str]) -> list[str]:
    code_points = setup_fonts()
    return [visible(label, lambda ch: ord(ch) in code_points) for label in labels]


def is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in "WF"  # CJK characters and full-width punctuation


def text_width(text: str) -> float:
    """Inches at FONT pt, estimated (1 em per CJK character, ~0.62 em for DejaVu Sans) without a renderer."""
    return sum(1.0 if is_wide(ch) else 0.62 for ch in text) * FONT / 72


def stacked(label: str) -> str:
    """CJK characters one per line, as vertical Chinese is written; Latin runs such as '(1/2)' stay whole."""
    lines: list[str] = []
    for ch in label:
        if is_wide(ch) or not lines or is_wide(lines[-1][-1]):
            lines.append(ch)
        else:
            lines[-1] += ch
    return "\n".join(lines)


def key_labels(labels: list[str], slot: float) -> tuple[list[tuple[str, float]], bool, float]:
    """(text, rotation) per key label of `slot` inches, whether they alternate over two rows, and their
    depth in inches. Labels that all fit in two slots (Chinese) are staggered flat; else a label too
    wide for its slot is stacked upright when it holds CJK, turned 90 degrees when not (or too wide)."""
    if all(text_width(label) <= 2 * slot for label in labels):
        return [(label, 0.0) for label in labels], True, 2 * LINE
    styled = []
    for label in labels:
        if text_width(label) <= slot:
            styled.append((label, 0.0))
        elif any(is_wide(ch) for ch in label) and all(text_width(part) <= slot for part in stacked(label).split("\n")):
            styled.append((stacked(label), 0.0))
        else:
            styled.append((label, 90.0))
    return styled, False, max(text_width(t) if r else (t.count("\n") + 1) * LINE for t, r in styled)


def layer_figure(weights: np.ndarray, labels: list[str], title: str) -> Figure:
    """weights (n_head, T, T) of one layer -> a grid of heatmaps, queries down, keys across, one colour bar."""
    n_head, T, _ = weights.shape
    labels = drawable_labels(labels)
    cols = min(n_head, MAX_COLS, math.ceil(math.sqrt(n_head)))
    rows = math.ceil(n_head / cols)
    # every k-th token is labelled when a probe is longer than MAX_TOKENS_SHOWN, so labels never overlap
    every = math.ceil(T / MAX_TOKENS_SHOWN)
    shown = list(range(0, T, every))
    side = min(max(T, 12), MAX_TOKENS_SHOWN) * PITCH  # inches per heatmap; 12 tokens' worth at least for the titles
    styled, staggered, depth = key_labels([labels[i] for i in shown], side / T * every)

    # the layout in inches: margins sized from the labels, then the heatmaps, then the colour bar
    left, bottom = 0.3 + max(text_width(labels[i]) for i in shown) + 0.1, 0.3 + depth + 0.1
    top, head_title, col_gap, bar_gap, bar_width, right = 0.45, 0.25, 0.1, 0.1, 0.15, 0.75
    grid_w, grid_h = cols * side + (cols - 1) * col_gap, rows * side + (rows - 1) * head_title
    width, height = left + grid_w + bar_gap + bar_width + right, top + head_title + grid_h + bottom
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / height, va="top")

    def box(x: float, y: float, w: float, h: float) -> list[float]:  # inches from the bottom left -> figure fraction
        return [x / width, y / height, w / width, h / height]

    # token labels are plain texts, not ticks: matplotlib measures a tick's label boxes on every
    # draw, and ticks were most of the drawing time
    for h in range(n_head):
        row, col = divmod(h, cols)
        x, y = left + col * (side + col_gap), bottom + (rows - 1 - row) * (side + head_title)
        ax = fig.add_axes(box(x, y, side, side))
        image = ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set(xticks=[], yticks=[])
        # y=1.0 fixes the title's place: left to itself matplotlib measures the axes' labels to find it
        ax.set_title(f"head {h}", fontsize=FONT + 1, y=1.0, pad=3)
        if col == 0:
            beside = offset_copy(ax.get_yaxis_transform(), fig, x=-3, units="points")
            for i in shown:
                ax.text(0, i, labels[i], transform=beside, ha="right", va="center", fontsize=FONT, gid="query label")
        if h + cols >= n_head:  # the lowest heatmap in its column
            below = [offset_copy(ax.get_xaxis_transform(), fig, y=-3 - lower * LINE * 72, units="points")
                     for lower in (0, 1)]  # the upper and lower of staggered rows
            for n, (i, (text, rotation)) in enumerate(zip(shown, styled)):
                ax.text(i, 0, text, transform=below[staggered and n % 2], rotation=rotation, ha="center", va="top",
                        fontsize=FONT, linespacing=1.0, gid="key label")
    fig.text(0.12 / width, (bottom + grid_h / 2) / height, "query", rotation=90, ha="left", va="center", fontsize=FONT)
    fig.text((left + grid_w / 2) / width, 0.1 / height, "key", ha="center", va="bottom", fontsize=FONT)
    bar = fig.add_axes(box(left + grid_w + bar_gap, bottom, bar_width, grid_h))
    fig.colorbar(image, cax=bar)
    bar.tick_params(labelsize=FONT)
    bar.set_ylabel("attention weight", fontsize=FONT)
    return fig


def cell_text(value: float, signed: bool = False) -> str:
    """Every number a heatmap draws, on one format: three decimals, and a value that would print as
    0.000 without being 0 as <0.001 (>-0.001), so 8.56e-08 and 0.000569 never sit side by side."""
    if 0 < abs(value) < 0.0005:
        return "<0.001" if value > 0 else ">-0.001"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def metric_figure(values: np.ndarray, metric: str, vmin: float | None = None, vmax: float | None = None,
                  baseline: float | None = None, title: str | None = None, baseline_name: str | None = "chance",
                  signed: bool = False) -> Figure:
    """values (n_layer, n_head) -> one annotated heatmap. A fixed vmin/vmax keeps a metric moving within
    0.006-0.017 from looking hot and cold; cells near `baseline` (chance, also in the title and on
    the colour bar) are dimmed, so the heads that clear it are the ones in full colour. signed: a + on
    positive cells (changes)."""
    n_layer, n_head = values.shape
    norm = Normalize(vmin=float(values.min()) if vmin is None else vmin,
                     vmax=float(values.max()) if vmax is None else vmax)
    shown = title or metric
    if baseline is not None and baseline_name:
        shown = f"{shown} · {baseline_name} {cell_text(baseline)}"
    grid = 0.7 * n_head
    width, height = max(1.4 + grid, 0.5 + text_width(shown) * (FONT + 1) / FONT + 0.2), 0.9 + 0.45 * n_layer
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.5 / width, 0.35 / height, grid / width, 0.45 * n_layer / height])
    image = ax.imshow(values, cmap="magma", norm=norm, aspect="auto", interpolation="nearest")
    at_chance = np.zeros(values.shape, dtype=bool)
    if baseline is not None:
        at_chance = np.abs(values - baseline) <= CHANCE_MARGIN * (norm.vmax - norm.vmin)
        veil = np.zeros((n_layer, n_head, 4))
        veil[at_chance] = (1.0, 1.0, 1.0, 0.7)  # white at 70%: the cell's colour shows through, faintly
        ax.imshow(veil, aspect="auto", interpolation="nearest")
    luminance = image.cmap(norm(values))[..., :3] @ [0.299, 0.587, 0.114]  # (n_layer, n_head)
    for layer, head in np.ndindex(n_layer, n_head):
        colour = "0.45" if at_chance[layer, head] else ("black" if luminance[layer, head] > 0.5 else "white")
        ax.text(head, layer, cell_text(float(values[layer, head]), signed), ha="center", va="center", fontsize=FONT,
                color=colour)
    ax.set_xticks(range(n_head), [f"H{h}" for h in range(n_head)])
    ax.set_yticks(range(n_layer), [f"L{layer}" for layer in range(n_layer)])
    ax.tick_params(length=0, labelsize=FONT)
    ax.set_title(shown, fontsize=FONT + 1, y=1.0, pad=4, loc="left")
    bar = fig.add_axes([(0.5 + grid + 0.1) / width, 0.35 / height, 0.12 / width, 0.45 * n_layer / height])
    fig.colorbar(image, cax=bar)
    bar.tick_params(labelsize=FONT - 1)
    if baseline is not None and norm.vmin <= baseline <= norm.vmax:
        bar.axhline(baseline, color="tab:cyan", linewidth=2)
    return fig


def paint(pictures: dict[str, Picture], folder: Path) -> dict[str, Path]:
    """Each picture as a whole PNG in folder: key -> file, '/' in a key turned '_'."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {key: folder / (key.replace("/", "_") + ".png") for key in pictures}
    for key, picture in pictures.items():
        # zlib's fastest level: a tenth of the drawing time saved for PNGs a quarter larger; no fsync:
        # a picture lost to a power cut is drawn again
        atomic_write(files[key], functools.partial(picture().savefig, format="png", dpi=DPI,
                                                   pil_kwargs={"compress_level": 1}), sync=False)
    return files


class Painter:
    """Pictures in, PNG files out: `submit` a report's pictures, collect them with `ready`. On a GPU a
    worker draws while training goes on; on a CPU a worker would take a core from training."""

    def __init__(self, background: bool):
        self.folder = Path(tempfile.gettempdir()) / f"attention-pictures-{os.getpid()}-{id(self):x}"
        # workers start when a task finds none idle: one while training, more for a spread report
        self.workers = max(1, min(FINAL_WORKERS, os.cpu_count() or 1))
        self.pool = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                     if background else None)
        self.pending: list[tuple[int, list[Future]]] = []

    def submit(self, step: int, pictures: dict[str, Picture], spread: bool = False) -> None:
        """spread (the final report, which the run waits for): split them over the workers."""
        folder = self.folder / str(step)
        if self.pool is not None:
            n_parts = min(self.workers, len(pictures)) if spread else 1
            items = list(pictures.items())
            parts = [dict(items[i::n_parts]) for i in range(n_parts)]
            # a worker started here is born with Ctrl-C blocked, so that it never sees it: Ctrl-C reaches the
            # whole process group, and the trainer decides what it means (a worker still importing printed a
            # traceback); one that reaches the trainer meanwhile waits until the mask is restored
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                self.pending.append((step, [self.pool.submit(paint, part, folder) for part in parts]))
                return
            except BrokenProcessPool:  # the worker died (killed, out of memory): draw here from now on
                print("warning: the process drawing the attention pictures has died; they are drawn in this "
                      "process from now on", file=sys.stderr, flush=True)
                self.pool = None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        done: Future = Future()
        try:
            done.set_result(paint(pictures, folder))
        except Exception as e:  # noqa: BLE001 - a picture that cannot be drawn is reported, not raised
            done.set_exception(e)
        self.pending.append((step, [done]))

    def ready(self, wait: bool = False, limit: int | None = None) -> list[tuple[int, dict[str, Path] | BaseException]]:
        """(step, key -> PNG, or the error) of the drawn reports, oldest first, at most `limit`; with wait,
        of every report. Their files stay until `release`d."""
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
        shutil.rmtree(self.folder / str(step), ignore_errors=True)

    def close(self) -> None:
        """Stop the workers, dropping pictures not yet drawn, and delete the files."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
