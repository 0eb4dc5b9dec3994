"""The head view's HTML generator without a browser: the data it stores, what it refuses, and the
font it embeds (tests/test_head_view_browser.py drives the page itself)."""
from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest

from heads.html_view import embedded_font, head_view_html


def causal(n_layer: int, n_head: int, T: int, seed: int = 0) -> np.ndarray:
    weights = np.tril(np.random.default_rng(seed).random((n_layer, n_head, T, T)))
    return weights / weights.sum(-1, keepdims=True)


def page_data(page: str) -> dict:
    return json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])


def embedded_subset(page: str):
    from fontTools.ttLib import TTFont

    encoded = re.search(r"url\(data:font/(?:otf|woff2);base64,([A-Za-z0-9+/=]+)\)", page)
    return TTFont(io.BytesIO(base64.b64decode(encoded[1]))) if encoded else None


def test_probes_and_title_given_by_position_still_make_the_page_with_its_weights():
    weights = causal(2, 3, 5)
    page = head_view_html([("en", ["a", "b", "c", "d", "e"], weights)], "run · step 5")
    data = page_data(page)
    assert "<title>run · step 5</title>" in page and data["title"] == "run · step 5"
    assert (data["n_layer"], data["n_head"], data["metrics"], data["baselines"]) == (2, 3, {}, {})
    stored = np.frombuffer(base64.b64decode(data["probes"][0]["weights"]), dtype=np.uint8).reshape(weights.shape)
    assert np.abs(stored / 255 - weights).max() <= 0.5 / 255 + 1e-9


def test_metrics_and_baselines_are_stored_per_group_with_nan_as_null():
    values = np.array([[0.5, np.nan, 0.25]])
    page = head_view_html([("en", ["a", "b"], causal(1, 3, 2))], metrics={"entropy": {"en": values, "all": values * 2}},
                          baselines={"entropy": {"en": 0.7, "all": 0.7}})
    data = page_data(page)
    assert data["metrics"] == {"entropy": {"en": [[0.5, None, 0.25]], "all": [[1.0, None, 0.5]]}}
    assert data["baselines"] == {"entropy": {"en": 0.7, "all": 0.7}}


def test_weights_or_metrics_of_the_wrong_shape_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"probe 'en'.*\(1, 3, 3, 3\)"):
        head_view_html([("en", ["a", "b"], causal(1, 3, 3))])
    with pytest.raises(ValueError, match=r"metric 'sink', group 'zh': \(3, 1\) is not \(n_layer, n_head\) = \(1, 3\)"):
        head_view_html([("en", ["a", "b"], causal(1, 3, 2))], metrics={"sink": {"zh": np.zeros((3, 1))}})


def test_no_probe_name_or_label_can_end_the_script_or_open_a_comment():
    page = head_view_html([("</script><!--", ["<b>", "&amp;"], causal(1, 1, 2))], "<i>title</i>")
    script = page.split("<script>", 1)[1]
    assert page.count("</script>") == 1 and "<!--" not in script and "<b>" not in script
    assert "<title>&lt;i&gt;title&lt;/i&gt;</title>" in page
    data = page_data(page)
    assert data["probes"][0]["name"] == "</script><!--" and data["probes"][0]["labels"] == ["<b>", "&amp;"]
    assert "http://" not in page and "https://" not in page and "<script src" not in page


def test_an_english_page_embeds_no_font():
    page = head_view_html([("en", ["␣The", "␣king", "↵"], causal(1, 2, 3))], "gpt-attention · out · step 500")
    assert "@font-face" not in page and embedded_subset(page) is None


def test_a_chinese_page_embeds_exactly_the_glyphs_it_shows_from_noto_sans_cjk_sc():
    labels = list("中文注意力机制很有意思。")
    page = head_view_html([("zh 探针", labels, causal(1, 2, len(labels)))], "run · step 1",
                          metrics={"熵": {"zh": np.zeros((1, 2))}})
    font = embedded_subset(page)
    beyond_latin = set("中文注意力机制很有意思。" "探针" "熵")  # DejaVu Sans draws the rest ("zh ", "run · step 1")
    assert set(font.getBestCmap()) == {ord(ch) for ch in beyond_latin}
    assert font["name"].getDebugName(1) == "Noto Sans CJK SC"
    assert len(page) < 30_000  # the glyphs of 20 characters, not the 16 MB face


def test_the_subset_is_made_in_well_under_a_second_and_then_cached():
    embedded_font("预热")  # the face is read from the collection once per process
    start = time.process_time()  # CPU time: other processes on the machine do not count
    rule = embedded_font("自注意力头的可视化")
    assert time.process_time() - start < 1.0
    start = time.perf_counter()
    assert embedded_font("自注意力头的可视化") is rule and time.perf_counter() - start < 0.01


def test_a_later_report_of_the_same_probes_reuses_the_subset():
    """The title's step changes from report to report; the Chinese it needs glyphs for does not."""
    labels = list("国王和王后")
    first = head_view_html([("zh", labels, causal(1, 1, 5))], "run · step 0")
    start = time.perf_counter()
    later = head_view_html([("zh", labels, causal(1, 1, 5))], "run · step 4269")
    assert time.perf_counter() - start < 0.1
    assert embedded_subset(later) is not None
    assert first.split("@font-face")[1][:2000] == later.split("@font-face")[1][:2000]
