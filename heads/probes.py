"""Probes: the fixed texts whose attention is pictured during a whole run, stored in the checkpoint
so that pictures of any checkpoint show the same text."""
from __future__ import annotations

from dataclasses import dataclass

from data.batches import TokenBins
from data.sources import DataError
from data.tokenizer import Tokenizer

SCAN_LINES = 200
# the probes of a model that stores none and has no data here (a pretrained GPT-2): one per group
# of the default corpus
FALLBACK_TEXTS = ["The king and the queen walked to the castle at night, while the rain fell on the sea.",
                  "国王和王后在夜里走向城堡，雨落在海上。中国人民的经济发展很快。",
                  "我喜欢喝茶。 = I like to drink tea."]


@dataclass(frozen=True)
class Probe:
    name: str
    text: str

    def ids(self, tokenizer: Tokenizer, max_tokens: int) -> list[int]:
        ids = tokenizer.encode(self.text)[:max_tokens]
        if len(ids) < 2:
            raise DataError(f"probe {self.name!r} ({self.text!r}) has fewer than 2 tokens: give a longer probe text")
        return ids


def passage(text: str, tokenizer: Tokenizer, max_tokens: int) -> str | None:
    """From the longest of the first SCAN_LINES lines (real text, not a title or a cast list) on, cut at
    max_tokens tokens; None for empty text."""
    lines = text.split("\n")
    scanned = [len(line.strip()) for line in lines[:SCAN_LINES]]
    if max(scanned, default=0) == 0:
        return None
    ids = tokenizer.encode("\n".join(lines[scanned.index(max(scanned)):]))[:max_tokens]
    return tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore")  # a cut character is dropped


def default_probes(bins: TokenBins, max_tokens: int, scan_tokens: int = 20000) -> list[Probe]:
    """One probe per group of the validation split, taken from its first documents."""
    probes = []
    for group, layout in bins.groups("val").items():
        ids = bins.splits["val"][layout["start"] : min(layout["end"], layout["start"] + scan_tokens)].tolist()
        for document in bins.tokenizer.decode(ids).split("<|endoftext|>"):
            text = passage(document, bins.tokenizer, max_tokens)
            if text:
                probes.append(Probe(group, text))
                break
    return probes


def script_name(text: str) -> str:
    """en, zh, pairs (both) or text: the default probes' group names, so their charts and maps line up."""
    latin = any(ch.isascii() and ch.isalpha() for ch in text)
    chinese = any("\u4e00" <= ch <= "\u9fff" for ch in text)
    return "pairs" if latin and chinese else "zh" if chinese else "en" if latin else "text"


def configured_probes(texts: list[str] | None, bins: TokenBins | None, max_tokens: int) -> list[Probe]:
    """The probes a config asks for: its own texts, or the defaults from the validation split."""
    if texts:
        names = [script_name(str(text)) for text in texts]
        return [Probe(name if names.count(name) == 1 else f"{name}{names[:i].count(name) + 1}", str(text))
                for i, (name, text) in enumerate(zip(names, texts))]
    if bins is None:
        raise DataError("no probe texts: give wandb.probes=[...] (or probes=[...]), or prepare the data")
    return default_probes(bins, max_tokens)
