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
from heads.metrics import (
    induction_score,
    normalised_entropy,
    pair_masks,
    previous_token_score,
    relative_distance,
    sink_score,
    standout,
    token_classes,
    uniform_causal,
    weight_on_keys,
)
from heads.plots import drawable_labels, layer_figure, metric_figure, paint, token_texts, visible

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
    assert relative_distance(weights).item() == pytest.approx(np.mean([1 / i for i in range(1, T)]))  # one of i back
    assert normalised_entropy(weights).item() == pytest.approx(0.0, abs=1e-9)
    assert sink_score(weights).item() == pytest.approx(1 / (T - 1))  # only row 1 looks at token 0


def test_uniform_causal_head_has_normalised_entropy_one():
    weights = uniform_causal_pattern(T)
    assert normalised_entropy(weights).item() == pytest.approx(1.0)
    assert previous_token_score(weights).item() == pytest.approx(np.mean([1 / (i + 1) for i in range(1, T)]))
    assert relative_distance(weights).item() == pytest.approx(0.5)  # halfway back, whatever T is
    assert relative_distance(uniform_causal_pattern(3 * T)).item() == pytest.approx(0.5)


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
    for fn in (normalised_entropy, relative_distance, previous_token_score, sink_score, induction_score):
        assert fn(weights).shape == (3, 2, 4)


def test_chance_is_what_uniform_causal_attention_scores():
    assert torch.allclose(uniform_causal(T), uniform_causal_pattern(T).double())
    queries = torch.tensor([[False, False, True, True]])
    keys = torch.zeros(1, 4, 4, dtype=torch.bool)
    keys[0, 2, 0] = keys[0, 3, 0] = keys[0, 3, 1] = True  # query 2 reads key 0; query 3 reads keys 0 and 1
    uniform = uniform_causal(4)[None, None, None]  # (L, B, H, T, T)
    assert weight_on_keys(uniform, queries, keys).item() == pytest.approx(1 / 3 + 2 / 4)  # the pair metrics' chance


def test_a_head_is_named_only_when_it_clears_chance_by_the_margin():
    values = np.array([[0.03, 0.05], [0.12, 0.02]])  # induction, chance 0.011, margin 0.1
    assert standout(values, 0.011, "induction") == {"layer": 1, "head": 0, "value": pytest.approx(0.12), "named": True,
                                                    "chance": 0.011}
    assert standout(values * 0.5, 0.011, "induction")["named"] is False  # 0.06 is not 0.1 past chance
    entropy = np.array([[0.95, 0.6]])  # lower is notable: 0.6 is 0.4 under chance 1.0
    lowest = standout(entropy, 1.0, "entropy")
    assert (lowest["layer"], lowest["head"]) == (0, 1) and lowest["named"]


def test_labels_of_split_characters_are_legible_never_replacement_chars():
    data = "中文 the".encode()
    labels = token_texts([data[:2], data[2:4], data[4:6], data[6:]])
    assert labels == ["中文(1/3)", "中文(2/3)", "中文(3/3)", " the"]
    assert token_texts([b"\xff", b"ok"]) == ["ff", "ok"]
    assert all("\ufffd" not in label for label in labels)
    assert visible(" a\n") == "␣a↵"


def test_heatmaps_render_cjk_latin_and_undrawable_characters_without_warnings(tmp_path):
    labels = ["老师", "，", "␣Hello", "\U00013000", "中文(1/2)", "中文(2/2)"]
    assert drawable_labels(["\U00013000"]) == ["U+13000"]  # an Egyptian hieroglyph no bundled font draws
    weights = uniform_causal_pattern(6).expand(2, 6, 6).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would be a UserWarning
        files = paint({"maps": lambda: layer_figure(weights, labels, "probe · layer 0"),
                       "metric": lambda: metric_figure(np.random.default_rng(0).random((3, 2)), "entropy")}, tmp_path)
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in files.values())


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


def test_pair_lines_split_into_english_queries_reading_their_chinese_half():
    from data.tokenizer import train_bpe

    tokenizer = train_bpe(["我喜欢茶。 = I like tea.\n他很好。 = He is well.\n"] * 20, vocab_size=300)
    ids = torch.tensor([tokenizer.encode("我喜欢茶。 = I like tea.\n他很好。 = He is well.\n")])
    masks = pair_masks(ids, token_classes(tokenizer))
    text = [tokenizer.decode_bytes([i]) for i in ids[0].tolist()]
    queries, keys = masks["en→zh"]
    for i in torch.nonzero(queries[0]).flatten().tolist():
        assert text[i].strip().isascii() and text[i].strip().isalpha()  # English words after a `=`
        read = [text[j] for j in torch.nonzero(keys[0, i]).flatten().tolist()]
        assert read and all(max(piece) >= 128 for piece in read)  # only Chinese bytes ...
        line_of_query = b"".join(text[:i]).count(b"\n")
        assert all(b"".join(text[:j]).count(b"\n") == line_of_query
                   for j in torch.nonzero(keys[0, i]).flatten().tolist())
    zh_queries, zh_keys = masks["zh→en"]
    first_line = [i for i in range(len(text)) if b"".join(text[:i]).count(b"\n") == 0]
    assert not zh_keys[0, first_line].any()  # nothing English comes before the first line's Chinese


def test_silencing_a_head_changes_only_what_flows_through_it():
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    idx = torch.randint(0, 50, (2, 8))
    intact, _ = model(idx)
    attn = model.blocks[1].attn
    attn.head_mask = torch.tensor([1.0, 1.0])
    assert torch.equal(model(idx)[0], intact)  # a mask of ones is the intact model
    attn.head_mask = torch.tensor([0.0, 1.0])
    silenced, _ = model(idx)
    attn.head_mask = None
    assert not torch.allclose(silenced, intact)
    with torch.no_grad():
        attn.W_O.weight[:, :8] = 0  # head 0's share of W_O: silencing it now changes nothing
        reference, _ = model(idx)
        attn.head_mask = torch.tensor([0.0, 1.0])
        assert torch.allclose(model(idx)[0], reference, atol=1e-6)
    attn.head_mask = None


def test_the_attention_table_keeps_an_even_share_of_every_probe():
    from heads.report import sample_rows

    per_probe = [[["a", i] for i in range(1000)], [["b", i] for i in range(800)], [["c", i] for i in range(900)]]
    rows, note = sample_rows(per_probe, 600)
    assert len(rows) == 600 and {r[0] for r in rows} == {"a", "b", "c"}
    assert sum(r[0] == "c" for r in rows) == 200 and rows[-1] == ["c", 899]  # spread to the last query
    assert note.startswith("600 of 2700 rows")
    assert sample_rows(per_probe[:1], 5000)[1] == "all 1000 rows"


def test_custom_probes_are_named_by_their_script():
    from heads.probes import configured_probes

    probes = configured_probes(["To be, or not", "中国人民", "我喜欢茶。 = I like tea.", "Another line"], None, 32)
    assert [p.name for p in probes] == ["en1", "zh", "pairs", "en2"]
