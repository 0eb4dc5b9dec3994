"""Attention inspection: the per-head metrics on patterns with known answers, token labels, the
pictures and the head view, and the report through train.py into an offline wandb run."""
from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest
import torch

from heads.html_view import head_view_html
from heads.labels import token_texts, visible
from heads.metrics import (induction_score, induction_tokens, mean_distance, normalised_entropy,
                           previous_token_score, sink_score)
from heads.plots import drawable_labels, layer_figure, metric_figure
from heads.report import png_bytes

T = 12


def previous_token_pattern(T: int) -> torch.Tensor:
    weights = torch.zeros(T, T)
    weights[0, 0] = 1
    weights[torch.arange(1, T), torch.arange(T - 1)] = 1
    return weights


def uniform_causal_pattern(T: int) -> torch.Tensor:
    weights = torch.ones(T, T).tril()
    return weights / weights.sum(-1, keepdim=True)


def test_pure_previous_token_head_scores_one():
    weights = previous_token_pattern(T)
    assert previous_token_score(weights).item() == pytest.approx(1.0)
    assert mean_distance(weights).item() == pytest.approx(1.0)
    assert normalised_entropy(weights).item() == pytest.approx(0.0, abs=1e-9)
    assert sink_score(weights).item() == pytest.approx(1 / (T - 1))  # only row 1 looks at token 0


def test_uniform_causal_head_has_normalised_entropy_one():
    weights = uniform_causal_pattern(T)
    assert normalised_entropy(weights).item() == pytest.approx(1.0)
    assert previous_token_score(weights).item() == pytest.approx(np.mean([1 / (i + 1) for i in range(1, T)]))
    assert mean_distance(weights).item() == pytest.approx(np.mean([i / 2 for i in range(1, T)]))


def test_all_mass_on_the_first_token_is_a_sink_of_one():
    weights = torch.zeros(T, T)
    weights[:, 0] = 1
    assert sink_score(weights).item() == pytest.approx(1.0)
    assert normalised_entropy(weights).item() == pytest.approx(0.0, abs=1e-9)


def test_perfect_induction_pattern_scores_one_and_others_do_not():
    n = 8
    weights = torch.zeros(2 * n, 2 * n)
    weights[:n + 1, 0] = 1  # first half: anywhere causal
    for t in range(n - 1):  # second half: attend to the token after the first occurrence
        weights[n + t, :] = 0
        weights[n + t, t + 1] = 1
    weights[2 * n - 1, 0] = 1
    assert induction_score(weights).item() == pytest.approx(1.0)
    assert induction_score(previous_token_pattern(2 * n)).item() == pytest.approx(0.0)
    assert induction_score(uniform_causal_pattern(2 * n)).item() < 0.2


def test_metrics_keep_leading_dimensions():
    weights = uniform_causal_pattern(T).expand(3, 2, 4, T, T)  # (L, B, H, T, T)
    for fn in (normalised_entropy, mean_distance, previous_token_score, sink_score, induction_score):
        assert fn(weights).shape == (3, 2, 4)


def test_induction_tokens_repeat_a_seeded_random_sequence():
    tokens = induction_tokens(vocab_size=100, length=20, batch=3, seed=5, exclude=99)
    assert tokens.shape == (3, 40)
    assert torch.equal(tokens[:, :20], tokens[:, 20:])
    assert (tokens != 99).all() and all(len(set(row[:20].tolist())) == 20 for row in tokens)
    assert torch.equal(tokens, induction_tokens(100, 20, 3, 5, 99))


def test_labels_of_split_characters_are_legible_never_replacement_chars():
    data = "中文 the".encode()
    labels = token_texts([data[:2], data[2:4], data[4:6], data[6:]])
    assert labels == ["中文(1/3)", "中文(2/3)", "中文(3/3)", " the"]
    assert token_texts([b"\xff", b"ok"]) == ["ff", "ok"]
    assert all("\ufffd" not in label for label in labels)
    assert visible(" a\n") == "␣a↵"


def test_heatmaps_render_cjk_latin_and_undrawable_characters_without_warnings():
    labels = ["老师", "，", "␣Hello", "\U00013000", "中文(1/2)", "中文(2/2)"]
    assert drawable_labels(["\U00013000"]) == ["U+13000"]  # an Egyptian hieroglyph no bundled font draws
    weights = uniform_causal_pattern(6).expand(2, 6, 6).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would be a UserWarning
        png = png_bytes(layer_figure(weights, labels, "probe · layer 0"))
        png_bytes(metric_figure(np.random.default_rng(0).random((3, 2)), "entropy"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_head_view_is_self_contained_and_holds_the_weights():
    weights = np.stack([uniform_causal_pattern(4).numpy()] * 2)[None]  # (L=1, H=2, 4, 4)
    page = head_view_html([("zh </script>", ["老师", "，", "您", "好"], weights)])
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert "老师" in page and page.count("</script>") == 1  # the probe name cannot close the script
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    stored = np.frombuffer(base64.b64decode(data["probes"][0]["weights"]), dtype=np.uint8).reshape(1, 2, 4, 4)
    assert np.abs(stored / 255 - weights).max() <= 0.5 / 255 + 1e-9


def test_default_probes_take_real_text_from_each_validation_group(tiny_corpus, tmp_path):
    from data.batches import TokenBins
    from data.config import DataConfig
    from data.prepare import prepare
    from heads.probes import default_probes

    cfg = DataConfig(name="t", root=str(tmp_path / "prepared"), text_paths=[str(tiny_corpus)], vocab_size=320)
    prepare(cfg)
    bins = TokenBins(cfg.dir)
    (probe,) = default_probes(bins, max_tokens=20)
    assert probe.name == "text" and probe.text.strip()
    assert 2 <= len(probe.ids(bins.tokenizer, 20)) <= 20
    assert probe.text in bins.tokenizer.decode(bins.splits["val"].tolist())
