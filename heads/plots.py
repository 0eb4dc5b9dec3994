"""Pictures of attention: a grid of every head's heatmap for one layer and probe, and an
L x H heatmap per metric. Chinese renders as characters through the Noto Sans CJK font that the
`noto-cjk-sans-otc` package installs, as a fallback after DejaVu Sans for Latin text."""
from __future__ import annotations

import functools
import math

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from heads.labels import visible

LATIN_FONT, CJK_FONT = "DejaVu Sans", "Noto Sans CJK SC"


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
    latin_path = font_manager.findfont(LATIN_FONT, fallback_to_default=False)
    return frozenset(FT2Font(latin_path).get_charmap()) | frozenset(FT2Font(cjk_path).get_charmap())


def drawable_labels(labels: list[str]) -> list[str]:
    code_points = setup_fonts()
    return [visible(label, lambda ch: ord(ch) in code_points) for label in labels]


def layer_figure(weights: np.ndarray, labels: list[str], title: str) -> Figure:
    """weights (n_head, T, T) of one layer -> a grid of heatmaps, queries down, keys across."""
    n_head, T, _ = weights.shape
    labels = drawable_labels(labels)
    cols = min(n_head, 4)
    rows = math.ceil(n_head / cols)
    cell = 1.2 + 0.14 * T  # inches per heatmap: room for one label per token
    fig = Figure(figsize=(cols * cell + 1.6, rows * cell + 0.6))
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    # shared axes: token labels on the left column (queries) and the bottom row (keys) only;
    # text layout is most of the drawing time, and the grid reads the same
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=1.0 / (cols * cell + 1.6), right=1 - 1.2 / (cols * cell + 1.6), bottom=0.9 / (rows * cell + 0.6),
                        top=1 - 0.5 / (rows * cell + 0.6), wspace=0.08, hspace=0.25)
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
        ax.set_xlabel("key", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_yticks(range(T), labels, fontsize=6)
        ax.set_ylabel("query", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


def metric_figure(values: np.ndarray, metric: str) -> Figure:
    """values (n_layer, n_head) -> one annotated heatmap."""
    n_layer, n_head = values.shape
    fig = Figure(figsize=(1.2 + 0.7 * n_head, 1.0 + 0.5 * n_layer), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="magma", aspect="auto")
    for layer in range(n_layer):
        for head in range(n_head):
            ax.text(head, layer, f"{values[layer, head]:.2f}", ha="center", va="center", fontsize=7, color="tab:cyan")
    ax.set_xticks(range(n_head), [f"H{h}" for h in range(n_head)])
    ax.set_yticks(range(n_layer), [f"L{layer}" for layer in range(n_layer)])
    ax.set_title(metric)
    fig.colorbar(image, ax=ax)
    return fig
