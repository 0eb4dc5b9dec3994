"""The attention pictures as the report saves them (PNG at dpi 90): labels legible at wandb's panel
size, Chinese key labels upright, the colour bar against the grid, and metric heatmaps on a fixed
scale with their chance baseline."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from heads.plots import DPI, layer_figure, metric_figure  # DPI: what the report saves at

EN = ["␣The", "␣quick", "␣brown", "␣fox", "␣jumps", "␣over", "␣the", "␣lazy", "␣dog", ".", "␣It", "␣was", "␣the",
      "␣best", "␣of", "␣times", ",", "␣it", "␣was", "␣the", "␣worst", "␣of", "␣times", ";", "␣the", "␣age", "␣of",
      "␣wisdom", ",", "␣and", "␣the", "↵"]
ZH = (list("话说天下大势") + ["，分"] + list("久必合，合久必分。周末七国分争") + ["，并"] + list("入于秦。及秦灭")
      + ["之后", "，"])


def causal_weights(n_head: int, T: int) -> np.ndarray:
    weights = np.random.default_rng(0).random((n_head, T, T)) * np.tri(T)
    return weights / weights.sum(-1, keepdims=True)


def token_labels(fig, kind: str) -> list:
    return [text for ax in fig.axes for text in ax.texts if text.get_gid() == f"{kind} label"]


def heatmap_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_images() and ax.get_title().startswith("head")]


@pytest.mark.parametrize("labels", [EN, ZH], ids=["english", "chinese"])
def test_token_labels_are_at_least_11_px_tall_in_the_saved_png(labels):
    assert len(labels) == 32
    fig = layer_figure(causal_weights(6, 32), labels, "probe · layer 0")
    fig.set_dpi(DPI)
    renderer = fig.canvas.get_renderer()
    for kind in ("query", "key"):
        texts = token_labels(fig, kind)
        assert len(texts) == 32 * (2 if kind == "query" else 3)  # left column of 2 rows, bottom row of 3
        assert min(text.get_fontsize() for text in texts) * DPI / 72 >= 11
    upright = [t for t in token_labels(fig, "query") if t.get_rotation() == 0]
    assert min(t.get_window_extent(renderer).height for t in upright) >= 11


def test_chinese_key_labels_are_upright_and_english_words_do_not_overlap():
    chinese = layer_figure(causal_weights(6, 32), ZH, "zh · layer 0")
    assert {text.get_rotation() for text in token_labels(chinese, "key")} == {0.0}
    english = layer_figure(causal_weights(6, 32), EN, "en · layer 0")
    english.set_dpi(DPI)
    renderer = english.canvas.get_renderer()
    bottom = heatmap_axes(english)[-1]
    boxes = sorted((t.get_window_extent(renderer) for t in bottom.texts if t.get_gid() == "key label"),
                   key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 + 0.5 for a, b in pairwise(boxes))


def test_six_head_layer_at_32_tokens_fits_1600_px_at_dpi_90():
    for labels in (EN, ZH):
        width, height = layer_figure(causal_weights(6, 32), labels, "probe").get_size_inches() * DPI
        assert width <= 1600 and height <= 1200


def test_colour_bar_sits_against_the_grid():
    fig = layer_figure(causal_weights(6, 32), ZH, "zh · layer 0")
    grid_right = max(ax.get_position().x1 for ax in heatmap_axes(fig))
    bar = next(ax for ax in fig.axes if ax not in heatmap_axes(fig))
    gap_px = (bar.get_position().x0 - grid_right) * fig.get_figwidth() * DPI
    assert 0 <= gap_px <= 15


def test_metric_figure_uses_the_given_colour_scale():
    values = np.random.default_rng(0).uniform(0.006, 0.017, (6, 6))
    image = metric_figure(values, "induction", vmin=0.0, vmax=1.0).axes[0].get_images()[0]
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    image = metric_figure(values, "induction").axes[0].get_images()[0]  # the old call: the values' range
    assert (image.norm.vmin, image.norm.vmax) == (values.min(), values.max())


def test_metric_figure_titles_the_baseline_and_dims_cells_at_chance():
    values = np.full((2, 3), 0.011)
    values[1, 2] = 0.4  # the one head that clears chance
    fig = metric_figure(values, "induction", vmin=0.0, vmax=1.0, baseline=0.011, title="induction (en)")
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "induction (en) · chance 0.011"
    veil = ax.get_images()[1].get_array()  # white over the cells within the chance margin
    assert (np.asarray(veil[..., 3]) > 0).tolist() == [[True, True, True], [True, True, False]]
    assert metric_figure(values, "sink").axes[0].get_title(loc="left") == "sink"


def test_every_cell_prints_three_decimals_and_values_that_would_print_as_zero_as_below_0_001():
    values = np.array([[8.56e-08, 0.000569, 0.0], [0.25, 1.0, 0.0123]])  # what one H200 report held side by side
    ax = metric_figure(values, "sink", vmin=0.0, vmax=1.0, baseline=0.0196, title="sink (en)").axes[0]
    assert [t.get_text() for t in ax.texts] == ["<0.001", "0.001", "0.000", "0.250", "1.000", "0.012"]
    assert ax.get_title(loc="left") == "sink (en) · chance 0.020"  # chance on the cells' format too


def test_ablation_heatmap_fits_its_title_names_no_chance_and_signs_its_numbers():
    from heads.report import ablation_pictures

    deltas = np.array([[0.0123, -0.0004], [0.0, 0.002]])
    fig = ablation_pictures({"pairs": deltas})["attn_ablation/pairs"]()
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "val bpb change when the head is silenced (pairs)"  # no "chance 0"
    assert [t.get_text() for t in ax.texts] == ["+0.012", ">-0.001", "+0.000", "+0.002"]
    fig.canvas.draw()
    title = ax.title if ax.title.get_text() else ax._left_title  # noqa: SLF001 - where loc="left" puts it
    box = title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # the whole title is on the figure
