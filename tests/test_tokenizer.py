"""The BPE tokenizer, in this process: exact round trips for any Unicode text, stable save/load,
clear failures, a stream decoder that never splits a character. What sample.py prints with it is
in tests/test_tokenizer_cli.py."""
from __future__ import annotations

import pytest
import tiktoken

from common.errors import ConfigError
from common.settings import typed
from data.config import DataConfig
from data.tokenizer import EOT, Tokenizer, TokenizerError, stock_tokenizer, train_bpe

TRAINING_TEXT = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
    "中华人民共和国成立以来，经济建设取得了巨大成就。人民生活水平不断提高。",
    "老师，您好！ = Hello, teacher! 我们明天见。 = See you tomorrow.",
] * 20

HARD_TEXTS = [
    "Hello, world! 你好，世界！",
    "mixed 中文 and English in one line, 1998年1月1日 ＡＢＣ１２３",
    "emoji 😀👩‍👩‍👧 flags 🇨🇳🇬🇧 and symbols ∑∫√ ™",
    "rare CJK: 𠀀𪚥𰻞 (extension B+), 々〆〇 and Korean 한국어, Arabic العربية",
    "control \x00\t\r\n and the special string <|endoftext|> as plain text",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(TRAINING_TEXT, vocab_size=400)


def test_vocab_has_all_bytes_merges_and_eot_last(tokenizer):
    assert tokenizer.vocab_size == 400
    assert tokenizer.eot_id == 399 and tokenizer.special_tokens == {EOT: 399}
    assert {bytes([b]) for b in range(256)} <= set(tokenizer.ranks)
    assert len(set(tokenizer.ranks)) == 399


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_is_exact_for_any_unicode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")
    assert tokenizer.eot_id not in ids  # the string "<|endoftext|>" in text is not the separator


def test_merges_learned_from_both_languages(tokenizer):
    assert len(tokenizer.encode("the question")) < len("the question".encode())
    assert len(tokenizer.encode("人民")) < len("人民".encode())


def test_token_byte_lengths_count_text_bytes_and_zero_for_eot(tokenizer):
    lengths = tokenizer.token_byte_lengths()
    ids = tokenizer.encode("人民 and 世界")
    assert sum(lengths[i] for i in ids) == len("人民 and 世界".encode())
    assert lengths[tokenizer.eot_id] == 0


def test_save_load_keeps_ids_and_hash(tokenizer, tmp_path):
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")  # as the writers do
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.hash == tokenizer.hash
    for text in HARD_TEXTS:
        assert loaded.encode(text) == tokenizer.encode(text)
    assert train_bpe(TRAINING_TEXT, vocab_size=400).hash == tokenizer.hash  # training is deterministic
    assert train_bpe(TRAINING_TEXT, vocab_size=300).hash != tokenizer.hash


def test_load_of_missing_or_broken_file_names_it(tmp_path):
    with pytest.raises(TokenizerError, match="missing.json is missing"):
        Tokenizer.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match="broken.json is not a valid tokenizer"):
        Tokenizer.load(broken)


def test_stock_encoding_fails_clearly_without_download(monkeypatch):
    def offline(name):
        raise ConnectionError(f"cannot reach the server for {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError, match="could not load the 'gpt2' encoding.*data.tokenizer_kind=bpe"):
        stock_tokenizer("gpt2")
    with pytest.raises(ConfigError, match="must be one of"):  # refused before anything is read
        typed(DataConfig, {"tokenizer_kind": "gpt5"}, "data.")


def test_stream_decoder_holds_back_split_characters(tokenizer):
    # force characters to be split across tokens: byte-level ids for the three bytes of each character
    text = "中文 ok 😀!"
    byte_ids = [tokenizer.ranks.index(bytes([b])) for b in text.encode("utf-8")]
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.feed(i) for i in byte_ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces[0] == "" and pieces[2] == "中"  # nothing printed until the character is complete


def byte_ids(tokenizer: Tokenizer, data: bytes) -> list[int]:
    return [tokenizer.ranks.index(bytes([b])) for b in data]


def test_stream_decoder_turns_endoftext_into_a_line_break_and_drops_a_character_it_cut(tokenizer):
    decoder = tokenizer.stream_decoder()
    first = tokenizer.ranks.index("中".encode()[:1])
    assert decoder.feed(first) == ""
    assert decoder.feed(tokenizer.eot_id) == "\n"  # an incomplete character cut by a document break: left out
    assert [decoder.feed(i) for i in byte_ids(tokenizer, "中".encode())] == ["", "", "中"]  # a fresh start after
    assert decoder.flush() == ""


@pytest.mark.parametrize("cut", [1, 2])
def test_stream_decoder_leaves_out_a_character_incomplete_at_the_end(tokenizer, cut):
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.feed(i) for i in byte_ids(tokenizer, "ok 中".encode()[:3 + cut])] + [decoder.flush()]
    assert "".join(pieces) == "ok "  # no U+FFFD for the first bytes of 中
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.feed(i) for i in byte_ids(tokenizer, "ok 中".encode())] + [decoder.flush()]
    assert "".join(pieces) == "ok 中"


def test_stream_decoder_still_shows_bytes_that_are_not_utf8_as_replacement_characters(tokenizer):
    decoder = tokenizer.stream_decoder()
    ids = byte_ids(tokenizer, b"a\xffb") + byte_ids(tokenizer, "中".encode()[:1]) + byte_ids(tokenizer, b"c")
    assert "".join(decoder.feed(i) for i in ids) + decoder.flush() == "a\ufffdb\ufffdc"  # only the tail is dropped
    decoder = tokenizer.stream_decoder()
    assert "".join(decoder.feed(i) for i in byte_ids(tokenizer, b"a\xed\xa0")) + decoder.flush() == "a\ufffd\ufffd"
