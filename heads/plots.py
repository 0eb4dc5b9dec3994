"""Pictures of attention: a grid of every head's heatmap for one layer and probe, and an
L x H heatmap per metric. Chinese renders as characters through the Noto Sans CJK font that the
`noto-cjk-sans-otc` package installs, as a fallback after DejaVu Sans for Latin text.

The report saves these at dpi 90 and wandb shows them 500-800 px wide, so every size here is set
in points for that: labels are 9 pt (11 px), one token row or column is 11 pt, and the figure is
laid out by hand in inches (no constrained layout, which measures every label before drawing)."""
from __future__ import annotations

import functools
import math
import unicodedata

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from heads.labels import visible

LATIN_FONT, CJK_FONT = "DejaVu Sans", "Noto Sans CJK SC"
FONT = 9  # pt of every label: 11 px in a PNG saved at dpi 90
PITCH = 11 / 72  # inches per token on both axes of a heatmap: one 9 pt label with a little air
MAX_TOKENS_SHOWN = 32  # a heatmap is at most this many pitches wide; longer probes label every k-th token
MAX_COLS = 3  # heatmaps per row: 3 x 32 tokens at PITCH keeps a 6-head layer under 1600 px at dpi 90
CHANCE_MARGIN = 0.05  # metric cells within this fraction of the colour scale of the baseline count as chance


@functools.cache
def latin_code_points() -> frozenset[int]:
    """Every code point DejaVu Sans, the Latin font matplotlib bundles, can draw; the head view
    (heads/html_view.py) embeds no font for a page made of these."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(LATIN_FONT, fallback_to_default=False)).get_charmap())


@functools.cache
def setup_fonts() -> frozenset[int]:
    """Register the CJK font, make matplotlib fall back to it, and return every code point the two
    fonts can draw (labels use U+XXXX for the rest, so no missing-glyph warning is ever raised)."""
    import noto_cjk_sans_otc
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

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
    """Width in inches of one line at FONT pt, estimated (1 em per CJK character, DejaVu Sans'
    ~0.62 em for the rest) so the layout needs no renderer."""
    return sum(1.0 if is_wide(ch) else 0.62 for ch in text) * FONT / 72


def stacked(label: str) -> str:
    """A label with CJK characters written top to bottom, one per line, as vertical Chinese is:
    upright and one character wide. Runs of Latin characters such as '(1/2)' stay on one line."""
    lines: list[str] = []
    for ch in label:
        if is_wide(ch) or not lines or is_wide(lines[-1][-1]):
            lines.append(ch)
        else:
            lines[-1] += ch
    return "\n".join(lines)


def key_labels(labels: list[str], slot: float) -> tuple[list[tuple[str, float]], bool]:
    """How each key label (x axis, `slot` inches per label) is written: (text, rotation) per label,
    and whether they alternate between two rows.

    When every label fits in two slots (a Chinese probe: tokens of one or two characters) all are
    horizontal and staggered over two rows, so each has two slots of room and none overlaps.
    Otherwise (an English probe: words) the labels that fit in one slot stay horizontal, ones with
    CJK are stacked upright, and the rest are turned 90 degrees: CJK lies on its side only in the
    label of a character split across tokens, whose '(1/2)' is too wide to stack."""
    if all(text_width(label) <= 2 * slot for label in labels):
        return [(label, 0.0) for label in labels], True
    styled = []
    for label in labels:
        if text_width(label) <= slot:
            styled.append((label, 0.0))
        elif any(is_wide(ch) for ch in label) and all(text_width(part) <= slot for part in stacked(label).split("\n")):
            styled.append((stacked(label), 0.0))
        else:
            styled.append((label, 90.0))
    return styled, False


def label_depth(text: str, rotation: float) -> float:
    """How far in inches a key label reaches below its axes."""
    if rotation:
        return text_width(text)
    return (text.count("\n") + 1) * 1.2 * FONT / 72


def layer_figure(weights: np.ndarray, labels: list[str], title: str) -> Figure:
    """weights (n_head, T, T) of one layer -> a grid of heatmaps, queries down, keys across, with
    token labels on the left column (queries) and the bottom row (keys) and one colour bar."""
    n_head, T, _ = weights.shape
    labels = drawable_labels(labels)
    cols = min(n_head, MAX_COLS, math.ceil(math.sqrt(n_head)))
    rows = math.ceil(n_head / cols)
    # every k-th token is labelled when a probe is longer than MAX_TOKENS_SHOWN, so labels never overlap
    every = math.ceil(T / MAX_TOKENS_SHOWN)
    shown = list(range(0, T, every))
    side = min(max(T, 12), MAX_TOKENS_SHOWN) * PITCH  # inches per heatmap; 12 tokens' worth at least for the titles
    slot = side / T * every  # inches between labels
    styled, staggered = key_labels([labels[i] for i in shown], slot)
    line = 1.2 * FONT / 72

    # the layout in inches: margins sized from the labels, heatmaps side by side, the colour bar
    # right next to the grid
    left = 0.3 + max(text_width(labels[i]) for i in shown) + 0.1
    bottom = 0.3 + (2 * line if staggered else max(label_depth(t, r) for t, r in styled)) + 0.1
    top, head_title, col_gap = 0.45, 0.25, 0.1
    bar_gap, bar_width, right = 0.1, 0.15, 0.75
    grid_w = cols * side + (cols - 1) * col_gap
    grid_h = rows * side + (rows - 1) * head_title
    width = left + grid_w + bar_gap + bar_width + right
    height = top + head_title + grid_h + bottom
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / height, va="top")

    def box(x: float, y: float, w: float, h: float) -> list[float]:  # inches from the bottom left -> figure fraction
        return [x / width, y / height, w / width, h / height]

    # token labels are plain texts placed at their rows and columns, not tick labels: a tick is a
    # handful of artists whose label boxes matplotlib measures on every draw, and ticks were most
    # of the drawing time
    for h in range(n_head):
        row, col = divmod(h, cols)
        x0 = left + col * (side + col_gap)
        y0 = bottom + (rows - 1 - row) * (side + head_title)
        ax = fig.add_axes(box(x0, y0, side, side))
        image = ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        # y=1.0 fixes the title's place: left to itself matplotlib measures the axes' labels to find it
        ax.set_title(f"head {h}", fontsize=FONT + 1, y=1.0, pad=3)
        if col == 0:
            beside = offset_copy(ax.get_yaxis_transform(), fig, x=-3, units="points")
            for i in shown:
                ax.text(0, i, labels[i], transform=beside, ha="right", va="center", fontsize=FONT, gid="query label")
        if h + cols >= n_head:  # the lowest heatmap in its column
            below = [offset_copy(ax.get_xaxis_transform(), fig, y=-3 - lower * line * 72, units="points") for lower in (0, 1)]
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


def metric_figure(values: np.ndarray, metric: str, vmin: float | None = None, vmax: float | None = None,
                  baseline: float | None = None, title: str | None = None, baseline_name: str | None = "chance",
                  number: str = "{:.3g}") -> Figure:
    """values (n_layer, n_head) -> one annotated heatmap.

    vmin/vmax fix the colour scale (else it spans the values), so a metric that only moves within
    0.006-0.017 does not look hot and cold. `baseline` is what uniform causal attention scores: it
    goes into the title, as a line on the colour bar, and cells within CHANCE_MARGIN of the scale
    of it are dimmed with their number in grey, so the heads that clear chance (in either
    direction: entropy below it, induction above it) are the ones in full colour. baseline_name:
    how the title names the baseline (None: not at all); number: each cell's format."""
    n_layer, n_head = values.shape
    norm = Normalize(vmin=float(values.min()) if vmin is None else vmin,
                     vmax=float(values.max()) if vmax is None else vmax)
    shown = title or metric
    if baseline is not None and baseline_name:
        shown = f"{shown} · {baseline_name} {baseline:.3g}"
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
    colours = image.cmap(norm(values))
    for layer, head in np.ndindex(n_layer, n_head):
        luminance = colours[layer, head, :3] @ [0.299, 0.587, 0.114]
        colour = "0.45" if at_chance[layer, head] else ("black" if luminance > 0.5 else "white")
        ax.text(head, layer, number.format(values[layer, head]), ha="center", va="center", fontsize=FONT, color=colour)
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
