"""The tokenizer: a byte-level BPE (the 256 bytes are always in it, so every string round-trips) trained
with rustbpe and served by tiktoken, saved as one small JSON file next to the token bins and into every
checkpoint folder, so sampling never needs the corpus."""
from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from common.errors import UserError

EOT = "<|endoftext|>"  # separates documents in the token stream

# GPT-4's split pattern with numbers in groups of at most two digits (as nanochat): text is first
# cut into words, numbers and punctuation, and merges never cross those cuts
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
STOCK_ENCODINGS = ("gpt2", "cl100k_base")
FORMAT = "gpt-attention-tokenizer/1"


class TokenizerError(UserError):
    """A tokenizer that cannot be built or loaded; the message names the culprit and the fix."""


class Tokenizer:
    """A tiktoken Encoding plus what training and evaluation need from it."""

    def __init__(self, name: str, pattern: str, ranks: list[bytes], special_tokens: dict[str, int]):
        self.name, self.pattern, self.ranks, self.special_tokens = name, pattern, ranks, special_tokens
        self.encoding = tiktoken.Encoding(name=name, pat_str=pattern, special_tokens=special_tokens,
                                          mergeable_ranks={token: rank for rank, token in enumerate(ranks)})
        self.eot_id = special_tokens[EOT]
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Special-token strings in the text are encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for; special tokens count 0 (they are not text)."""
        return [len(token) for token in self.ranks] + [0] * (self.vocab_size - len(self.ranks))

    def to_json(self) -> str:
        ranks = [base64.b64encode(token).decode("ascii") for token in self.ranks]
        return json.dumps({"format": FORMAT, "name": self.name, "pattern": self.pattern,
                           "special_tokens": self.special_tokens, "ranks": ranks}, sort_keys=True)

    @property
    def hash(self) -> str:
        """Identifies the tokenizer: bins and checkpoints record it, so mismatches are caught."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} is missing: prepare the data again (python -m data.prepare)")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            if spec.get("format") != FORMAT:
                raise ValueError(f"format is {spec.get('format')!r}, expected {FORMAT!r}")
            ranks = [base64.b64decode(token) for token in spec["ranks"]]
            return cls(spec["name"], spec["pattern"], ranks, spec["special_tokens"])
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"tokenizer file {path} is not a valid tokenizer ({e}): prepare the data "
                                 "again") from None


class StreamDecoder:
    """Decodes ids one at a time for streaming output: a character split across tokens waits until it is
    whole (and is left out if it never is), <|endoftext|> becomes a line break, and bytes that can never be
    UTF-8 (an undertrained model emits some) show as U+FFFD."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        if token_id == self.tokenizer.eot_id:
            return self.flush() + "\n"
        return self.decoder.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """What is left at the end, but a character's first bytes; the decoder starts afresh after."""
        pending, _ = self.decoder.getstate()
        self.decoder.reset()
        try:
            return pending.decode("utf-8")  # nothing pending: ""
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data":  # a character's first bytes
                return ""
            # bytes no character starts with: CPython's decoder holds back ED A0-BF (a surrogate's start)
            return pending.decode("utf-8", errors="replace")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn a byte-level BPE of `vocab_size` ids (the 256 bytes, the merges, then <|endoftext|>)."""
    import rustbpe

    trainer = rustbpe.Tokenizer()
    # -1: room for EOT. rustbpe holds buffer_size texts at once: 256 pieces of a long document
    # (data/corpus.py, ~64K characters each) are a few tens of MB; the result does not depend on it
    try:
        trainer.train_from_iterator(iter(texts), vocab_size - 1, buffer_size=256, pattern=SPLIT_PATTERN)
    except Exception as e:
        # a Ctrl-C that lands while rustbpe's native code pulls the next text comes back wrapped (as the
        # cause of a SystemError): give it back as the KeyboardInterrupt it is
        if isinstance(e.__cause__, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    ranks = [bytes(token) for token, _rank in sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])]
    return Tokenizer("bpe", trainer.get_pattern(), ranks, {EOT: len(ranks)})


def stock_tokenizer(name: str) -> Tokenizer:
    """A stock tiktoken encoding; tiktoken downloads these once, so this fails cleanly offline."""
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception as e:  # requests' ConnectionError, timeouts, HTTP errors, a broken cache
        raise TokenizerError(f"tiktoken could not load the {name!r} encoding ({type(e).__name__}: it is downloaded on "
                             "first use and this machine cannot reach its server): use data.tokenizer_kind=bpe, or "
                             "run once where it can download and copy tiktoken's cache (TIKTOKEN_CACHE_DIR)") from None
    ranks = sorted(encoding._mergeable_ranks, key=encoding._mergeable_ranks.get)
    return Tokenizer(name, encoding._pat_str, ranks, dict(encoding._special_tokens))
