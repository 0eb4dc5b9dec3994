"""Corpus -> split -> tokenizer -> token bins, when the fingerprint of the inputs changes: python -m data.prepare.

The corpus streams three times as token-safe pieces, never held whole: to learn the document names (which
decide the split), to train the BPE, to tokenize it into a temp file per split. Nothing is replaced until
all is written; then meta.json goes, the new files are renamed over the old and meta.json comes back last,
so a folder with a meta.json is complete. A second preparation waits for the lock, then finds it up to date.
"""
from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.folders import folder_lock, remove_debris, temp_path
from data.batches import TokenBins
from data.config import TOKENIZER_KINDS, DataConfig
from data.corpus import DataError, Piece, held_out, pieces
from data.sources import (
    CLEANING_VERSION,
    DEFAULT_SOURCES,
    custom_files,
    custom_fingerprint,
    custom_pieces,
    default_corpus,
)
from data.tokenizer import SPLIT_PATTERN, Tokenizer, TokenizerError, stock_tokenizer, train_bpe

META_VERSION = 1
# the BPE learns from at most this much training text (the default corpus, ~10 MB, is whole): rustbpe's
# memory grows with its text, up to ~20 bytes a byte for Chinese, whose clauses rarely repeat: ~0.7 GB here
BPE_SAMPLE_BYTES = 32_000_000
ENCODE_CHARS = 1 << 21  # text per encode_batch call: its token lists cost ~40 bytes a token
PROGRESS_SECONDS = 30.0  # how often a long tokenization says how far it is
SPLITS = ("train", "val")

Stream = Callable[[], Iterator[Piece]]  # the corpus in corpus order; each call reads it anew


def fingerprint(cfg: DataConfig) -> str:
    """Everything the bins depend on, cheap to compute: a model folder's tokenizer counts by its files' hash."""
    if cfg.text_paths:
        inputs = {"text": custom_fingerprint(list(cfg.text_paths))}
    else:
        inputs = {name: DEFAULT_SOURCES[name][0].sha256 for name in cfg.sources}
    tokenizer = [cfg.tokenizer_kind if cfg.tokenizer_kind in TOKENIZER_KINDS else cfg.tokenizer_label,
                 cfg.vocab_size if cfg.tokenizer_kind == "bpe" else None, SPLIT_PATTERN]
    spec = {"meta_version": META_VERSION, "cleaning_version": CLEANING_VERSION, "inputs": inputs,
            "val_fraction": cfg.val_fraction, "tokenizer": tokenizer}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def is_prepared(folder: Path, expected: str) -> bool:
    """Whether `folder` holds whole bins, tokenizer and meta made from the inputs of fingerprint `expected`."""
    try:
        return TokenBins(folder).meta["fingerprint"] == expected
    except (OSError, ValueError, KeyError, TypeError, DataError, TokenizerError):
        return False


def corpus_stream(cfg: DataConfig) -> Stream:
    """Your files (read anew on every pass), or the default corpus (downloaded when missing; held in memory)."""
    if cfg.text_paths:
        files = custom_files(list(cfg.text_paths))
        return lambda: custom_pieces(files)
    documents = default_corpus(list(cfg.sources), Path(cfg.downloads))
    return lambda: (piece for doc in documents for piece in pieces([doc.text], doc.source, doc.group))


class Inventory:
    """What the first pass over the corpus learns: per group, which documents (in corpus order) are held out
    for validation, and each split's documents and UTF-8 bytes. Memory: 40 bytes a document."""

    def __init__(self, stream: Stream, val_fraction: float):
        digests: dict[str, bytearray] = {}  # per group: the sha256 of each document's name, joined
        sizes: dict[str, array] = {}
        size = 0
        for piece in stream():
            size += len(piece.text.encode("utf-8"))
            if piece.last:
                digests.setdefault(piece.group, bytearray()).extend(hashlib.sha256(piece.name.encode()).digest())
                sizes.setdefault(piece.group, array("q")).append(size)
                size = 0
        self.val = held_out(digests, val_fraction)  # per group: is each document held out
        held = np.concatenate(list(self.val.values()))  # (documents,) group after group
        size_of = np.concatenate([np.asarray(sizes[group]) for group in self.val])
        self.documents = {"train": int((~held).sum()), "val": int(held.sum())}
        self.bytes = {"train": int(size_of[~held].sum()), "val": int(size_of[held].sum())}

    def with_splits(self, corpus: Iterator[Piece]) -> Iterator[tuple[str, Piece]]:
        """Each piece with its split, by its document's place in its group."""
        index = dict.fromkeys(self.val, 0)
        for piece in corpus:
            seen = self.val.get(piece.group)
            if seen is None or index[piece.group] >= len(seen):
                raise changed(piece.name.split("#")[0])  # a document the first pass did not see
            yield ("val" if seen[index[piece.group]] else "train"), piece
            index[piece.group] += piece.last


def changed(what: str) -> DataError:
    return DataError(f"data.text_paths: {what} changed while it was being prepared: run again once it no longer "
                     "changes; nothing already prepared was replaced")


def make_tokenizer(cfg: DataConfig, stream: Stream, inventory: Inventory) -> Tokenizer:
    """The BPE trained on the training split, a stock tiktoken encoding, or a model folder's tokenizer."""
    if cfg.tokenizer_kind not in TOKENIZER_KINDS:
        from data.gpt2 import gpt2_tokenizer

        return gpt2_tokenizer(Path(cfg.tokenizer_kind))
    if cfg.tokenizer_kind != "bpe":
        return stock_tokenizer(cfg.tokenizer_kind)
    train_bytes = inventory.bytes["train"]
    sample = f" (a {BPE_SAMPLE_BYTES / 1e6:.0f} MB sample of {train_bytes / 1e6:.0f} MB)" \
        if train_bytes > BPE_SAMPLE_BYTES else ""
    print(f"data: training a {cfg.vocab_size}-token BPE on {inventory.documents['train']} training documents{sample}",
          flush=True)
    # beyond BPE_SAMPLE_BYTES, a seeded random share of the pieces: each language and file of a large corpus is seen
    share, rng = BPE_SAMPLE_BYTES / max(train_bytes, 1), random.Random(0)
    texts = (piece.text for split, piece in inventory.with_splits(stream())
             if split == "train" and (share >= 1 or rng.random() < share))
    return train_bpe(texts, cfg.vocab_size)


def batches(pieces: Iterator[tuple[str, Piece]]) -> Iterator[list[tuple[str, Piece]]]:
    """The pieces (with their splits) in batches of ENCODE_CHARS characters or a piece more."""
    batch, chars = [], 0
    for item in pieces:
        batch.append(item)
        chars += len(item[1].text)
        if chars >= ENCODE_CHARS:
            yield batch
            batch, chars = [], 0
    yield batch


def tokenize(stream: Stream, inventory: Inventory, tokenizer: Tokenizer, dtype: str,
             out: Path) -> dict[str, dict[str, Counter]]:
    """Encode the corpus ENCODE_CHARS at a time (in parallel) into each split's temp bin, a document's tokens
    then <|endoftext|>, its groups one after the other (in the order they come); return per split and group
    the text's tokens, bytes and documents."""
    counts: dict[str, dict[str, Counter]] = {split: {} for split in SPLITS}
    parts: dict[tuple[str, str], BinaryIO] = {}  # (split, group): its temp file, <split>.<group>
    total, done, reported = inventory.bytes["train"] + inventory.bytes["val"], 0, time.time()
    print(f"data: tokenizing {sum(inventory.documents.values())} documents ({total / 1e6:.1f} MB)", flush=True)
    try:
        for batch in batches(inventory.with_splits(stream())):
            for (split, piece), ids in zip(batch, tokenizer.encode_batch([piece.text for _, piece in batch])):
                if piece.group not in counts[split]:
                    counts[split][piece.group] = Counter()
                    parts[split, piece.group] = open(temp_path(out / f"{split}.{piece.group}"), "wb")
                tokens = ids + [tokenizer.eot_id] * piece.last
                parts[split, piece.group].write(np.asarray(tokens, dtype=dtype).tobytes())
                n_bytes = len(piece.text.encode("utf-8"))
                counts[split][piece.group].update(tokens=len(ids), bytes=n_bytes, documents=int(piece.last))
                done += n_bytes
            if time.time() - reported > PROGRESS_SECONDS:
                print(f"data: tokenized {done / 1e6:.0f} of {total / 1e6:.0f} MB", flush=True)
                reported = time.time()
    finally:
        for file in parts.values():
            file.close()
    for split in SPLITS:  # the first part becomes the bin, the others are appended to it
        first, *rest = [temp_path(out / f"{split}.{group}") for group in counts[split]]
        with open(first, "ab") as joined:
            for part in rest:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, joined, 1 << 20)
                part.unlink()
        first.replace(temp_path(out / f"{split}.bin"))
    return counts


def layout(split: str, counts: dict[str, Counter]) -> dict:
    """A split's bin for meta.json: its totals, and where each group's tokens start and end."""
    groups, start = {}, 0
    for group, count in counts.items():
        end = start + count["tokens"] + count["documents"]  # a document's tokens, then its <|endoftext|>
        groups[group] = {"start": start, "end": end, "tokens": count["tokens"], "bytes": count["bytes"],
                         "documents": count["documents"]}
        start = end
    return {"file": f"{split}.bin", "tokens": start, "bytes": sum(c["bytes"] for c in counts.values()),
            "documents": sum(c["documents"] for c in counts.values()), "groups": groups}


def build(cfg: DataConfig, expected: str) -> dict:
    """Prepare cfg.dir from scratch (holding its lock); return the meta."""
    out, started = cfg.dir, time.time()
    stream = corpus_stream(cfg)
    print("data: reading the corpus to split it into training and validation documents", flush=True)
    inventory = Inventory(stream, cfg.val_fraction)
    tokenizer = make_tokenizer(cfg, stream, inventory)
    try:
        dtype = "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"
        counts = tokenize(stream, inventory, tokenizer, dtype, out)
        totals = {group: Counter() for group in inventory.val}  # every group, in corpus order
        for groups in counts.values():
            for group, count in groups.items():
                totals[group].update(count)
        meta = {
            "fingerprint": expected,
            "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": dtype,
            "splits": {split: layout(split, counts[split]) for split in SPLITS},
            "bytes_per_token": {g: round(c["bytes"] / max(c["tokens"], 1), 3) for g, c in totals.items()},
        }
        temp_path(out / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
        temp_path(out / "meta.json").write_text(json.dumps(meta, indent=2))
        if fingerprint(cfg) != expected:  # a file edited, grown or shrunk while it was read
            raise changed("a file")
    except BaseException:  # a full disk, Ctrl-C, anything: the old files stay, the new ones go
        remove_debris(out)
        raise
    try:
        (out / "meta.json").unlink(missing_ok=True)
        for name in ["tokenizer.json", "train.bin", "val.bin", "meta.json"]:
            temp_path(out / name).replace(out / name)
    except OSError as e:
        remove_debris(out)
        raise DataError(f"cannot move the new data into {out} ({e.strerror}): it is incomplete and is prepared "
                        "again on the next run; check that folder") from None
    print(f"data: prepared {out} in {time.time() - started:.0f}s: "
          + ", ".join(f"{s} {m['tokens']:,} tokens" for s, m in meta["splits"].items())
          + " | bytes/token " + ", ".join(f"{g} {v}" for g, v in meta["bytes_per_token"].items()))
    return meta


def prepare(cfg: DataConfig) -> dict:
    """Make sure cfg.dir holds bins, tokenizer and meta for this config; return the meta."""
    expected = fingerprint(cfg)
    try:
        if not is_prepared(cfg.dir, expected):
            with folder_lock(cfg.dir, "data.root", wait=True):
                if not is_prepared(cfg.dir, expected):  # the holder we waited for may have just prepared it
                    return build(cfg, expected)
    except BrokenPipeError:
        raise  # stdout's reader went away (`| head`): no data folder problem, see common.cli.run_entry
    except OSError as e:  # writing: the data folder's own errors (reading ones are DataErrors already)
        folder = cfg.dir.resolve()
        where = Path(e.filename).resolve() if e.filename else folder  # a failed write() names no file
        if where != folder and folder not in where.parents and where not in folder.parents:
            raise DataError(f"cannot use {e.filename} ({e.strerror or e}): check that it exists and can be "
                            "read") from None
        fix = ("free space there or set data.root to a folder on a disk with room"
               if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable or set data.root to another folder")
        raise DataError(f"cannot write the prepared data in {cfg.dir} ({e.strerror or e}): {fix}; "
                        "nothing already prepared there was replaced") from None
    print(f"data: {cfg.dir} is up to date")
    return json.loads((cfg.dir / "meta.json").read_text())


if __name__ == "__main__":
    from common.cli import hydra_entry
    from common.settings import typed
    from trainer.config import RunConfig

    hydra_entry("train", "python -m data.prepare", RunConfig, lambda cfg: prepare(typed(DataConfig, cfg.data, "data.")),
                lambda cfg: f"nothing already prepared in {cfg.data.root}/{cfg.data.name} was replaced: run again to "
                            "prepare it")
