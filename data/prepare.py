"""Corpus -> split -> tokenizer -> token bins, once, streaming.

The folder (train.bin, val.bin, tokenizer.json, meta.json: see data/README.md) is rebuilt only
when its fingerprint, a hash of every input and setting the bins depend on, changes.

The corpus is never held in memory, so the disk bounds its size: it is read as a stream of
token-safe pieces (data/corpus.py) three times: to learn the document names, which decide the
split; to train the BPE; and to tokenize it a batch at a time into a temp file per split and
group. Memory is bounded by those batches, the BPE's sample and 40 bytes per document.

Nothing already prepared is replaced until everything new is written: all goes to temp files
(common/folders.py: temp_path), then meta.json goes, the new files are renamed over the old ones
and meta.json comes back last, so a folder with a meta.json is complete. One preparation at a time
holds the folder's lock (a second waits, then finds the data up to date). Temp files are removed
on every failure, Ctrl-C and SIGTERM; those of a killed run, by the next run.

Run alone: python -m data.prepare [data=custom data.text_paths=[...]]
"""
from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from common.folders import folder_lock, remove_debris, temp_path
from data.batches import bin_problem
from data.config import TOKENIZER_KINDS, DataConfig
from data.corpus import DataError, Piece, document_pieces, held_out, name_digest
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
# the BPE learns from at most this much training text: all of it up to here, beyond a seeded random
# share of its pieces spread over the whole split (the default corpus, ~10 MB, is always whole).
# rustbpe's memory grows with its text, up to ~20 bytes a byte for Chinese (whose clauses, its
# "words", rarely repeat): ~0.7 GB at this bound
BPE_SAMPLE_BYTES = 32_000_000
ENCODE_CHARS = 1 << 21  # text per encode_batch call: its token lists cost ~40 bytes a token
PROGRESS_SECONDS = 30.0  # how often a long tokenization says how far it is
SPLITS = ("train", "val")

Stream = Callable[[], Iterator[Piece]]  # the corpus in corpus order; each call reads it anew


def fingerprint(cfg: DataConfig) -> str:
    """Everything the bins depend on; cheap to compute (no download, no tokenizing): a model
    folder's tokenizer counts by the hash of its files (DataConfig.tokenizer_label)."""
    if cfg.text_paths:
        inputs = {"text": custom_fingerprint(list(cfg.text_paths))}
    else:
        inputs = {name: DEFAULT_SOURCES[name][0].sha256 for name in cfg.sources}
    spec = {
        "meta_version": META_VERSION,
        "cleaning_version": CLEANING_VERSION,
        "inputs": inputs,
        "val_fraction": cfg.val_fraction,
        "tokenizer": [cfg.tokenizer_kind if cfg.tokenizer_kind in TOKENIZER_KINDS else cfg.tokenizer_label,
                      cfg.vocab_size if cfg.tokenizer_kind == "bpe" else None, SPLIT_PATTERN],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def bin_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def is_prepared(folder: Path, expected: str) -> bool:
    """Whether `folder` holds bins, tokenizer and meta made from the inputs whose fingerprint is
    `expected`. Anything missing, damaged or made from other inputs: no, rebuild."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["fingerprint"] != expected or bin_problem(folder, meta):
            return False
        return Tokenizer.load(folder / "tokenizer.json").hash == meta["tokenizer_hash"]
    except (OSError, ValueError, KeyError, TypeError, TokenizerError):
        return False


def corpus_stream(cfg: DataConfig) -> Stream:
    """The configured corpus as a stream of Pieces: your files (read anew on every pass), or the
    default corpus (downloaded when missing; ~10 MB, held in memory)."""
    if cfg.text_paths:
        files = custom_files(list(cfg.text_paths))
        return lambda: custom_pieces(files)
    documents = default_corpus(list(cfg.sources), Path(cfg.downloads))
    return lambda: document_pieces(documents)


class Inventory:
    """What the first pass over the corpus learns: per group, in corpus order, each document's
    name digest and UTF-8 size, and from the names which documents are held out for validation."""

    def __init__(self, stream: Stream, val_fraction: float):
        digests: dict[str, bytearray] = {}
        self.sizes: dict[str, array] = {}
        size = 0
        for piece in stream():
            size += len(piece.text.encode("utf-8"))
            if piece.last:
                digests.setdefault(piece.group, bytearray()).extend(name_digest(piece.name))
                self.sizes.setdefault(piece.group, array("q")).append(size)
                size = 0
        self.val = held_out(digests, val_fraction)  # per group: is each document held out

    def in_split(self, group: str, split: str) -> np.ndarray:
        return self.val[group] if split == "val" else ~self.val[group]

    def documents(self, split: str) -> int:
        return sum(int(self.in_split(g, split).sum()) for g in self.val)

    def text_bytes(self, split: str) -> int:
        return sum(int(np.asarray(self.sizes[g])[self.in_split(g, split)].sum()) for g in self.val)

    def with_splits(self, pieces: Iterator[Piece]) -> Iterator[tuple[str, Piece]]:
        """Each piece with its split, by its document's place in its group."""
        index = dict.fromkeys(self.val, 0)
        for piece in pieces:
            seen = self.val.get(piece.group)
            if seen is None or index[piece.group] >= len(seen):
                raise changed(piece.name.split("#")[0])  # a document the first pass did not see
            yield ("val" if self.val[piece.group][index[piece.group]] else "train"), piece
            index[piece.group] += piece.last


def changed(what: str) -> DataError:
    return DataError(f"data.text_paths: {what} changed while it was being prepared: run again once it no longer "
                     "changes; nothing already prepared was replaced")


def bpe_texts(stream: Stream, inventory: Inventory) -> Iterator[str]:
    """The text the BPE learns from: the training split's pieces, every one up to BPE_SAMPLE_BYTES,
    beyond that a seeded random share of that size, spread over the whole split (so each
    language and file of a large corpus is seen)."""
    share = BPE_SAMPLE_BYTES / max(inventory.text_bytes("train"), 1)
    rng = random.Random(0)
    for split, piece in inventory.with_splits(stream()):
        if split == "train" and (share >= 1 or rng.random() < share):
            yield piece.text


def make_tokenizer(cfg: DataConfig, stream: Stream, inventory: Inventory) -> Tokenizer:
    """The BPE trained on the training split, a stock tiktoken encoding, or a model folder's tokenizer."""
    if cfg.tokenizer_kind not in TOKENIZER_KINDS:
        from data.gpt2 import gpt2_tokenizer

        return gpt2_tokenizer(Path(cfg.tokenizer_kind))
    if cfg.tokenizer_kind != "bpe":
        return stock_tokenizer(cfg.tokenizer_kind)
    train_bytes = inventory.text_bytes("train")
    sample = f" (a {BPE_SAMPLE_BYTES / 1e6:.0f} MB sample of {train_bytes / 1e6:.0f} MB)" \
        if train_bytes > BPE_SAMPLE_BYTES else ""
    print(f"data: training a {cfg.vocab_size}-token BPE on {inventory.documents('train')} training documents{sample}",
          flush=True)
    return train_bpe(bpe_texts(stream, inventory), cfg.vocab_size)


class Part:
    """One group's share of one split: its tokens, each document's followed by <|endoftext|>, go to
    a temp file `<split>.<group>` as they are encoded."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.file = path, dtype, open(path, "wb")
        self.tokens = self.bytes = self.documents = 0  # tokens: the text's, without the <|endoftext|>s

    def add(self, piece: Piece, ids: list[int], eot_id: int) -> int:
        """Append a piece's ids (and <|endoftext|> after a document's last); return its UTF-8 bytes."""
        self.file.write(np.asarray(ids + [eot_id] * piece.last, dtype=self.dtype).tobytes())
        n_bytes = len(piece.text.encode("utf-8"))
        self.tokens += len(ids)
        self.bytes += n_bytes
        self.documents += piece.last
        return n_bytes


def tokenize(stream: Stream, inventory: Inventory, tokenizer: Tokenizer, out: Path) -> dict[str, dict[str, Part]]:
    """Encode the corpus ENCODE_CHARS at a time (in parallel) into one Part per split and group, each
    split's Parts in the order its groups first appear (the order of the bins' layout)."""
    dtype = bin_dtype(tokenizer.vocab_size)
    parts: dict[str, dict[str, Part]] = {split: {} for split in SPLITS}
    total, done, reported = inventory.text_bytes("train") + inventory.text_bytes("val"), 0, time.time()
    print(f"data: tokenizing {inventory.documents('train') + inventory.documents('val')} documents "
          f"({total / 1e6:.1f} MB)", flush=True)
    try:
        for batch in batches(inventory.with_splits(stream())):
            for (split, piece), ids in zip(batch, tokenizer.encode_batch([piece.text for _, piece in batch])):
                if piece.group not in parts[split]:
                    parts[split][piece.group] = Part(temp_path(out / f"{split}.{piece.group}"), dtype)
                done += parts[split][piece.group].add(piece, ids, tokenizer.eot_id)
            if time.time() - reported > PROGRESS_SECONDS:
                print(f"data: tokenized {done / 1e6:.0f} of {total / 1e6:.0f} MB", flush=True)
                reported = time.time()
    finally:
        for part in (p for split in parts.values() for p in split.values()):
            part.file.close()
    return parts


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


def join_parts(path: Path, parts: dict[str, Part]) -> dict:
    """Lay a split's Parts out group after group in the temp file of `path` (the first Part becomes
    it, the others are appended and removed); return the split's layout for meta.json."""
    first, *rest = parts.values()
    with open(first.path, "ab") as joined:
        for part in rest:
            with open(part.path, "rb") as f:
                shutil.copyfileobj(f, joined, 1 << 20)
            part.path.unlink()
    first.path.replace(temp_path(path))
    groups, start = {}, 0
    for group, part in parts.items():
        end = start + part.tokens + part.documents  # a document's tokens, then its <|endoftext|>
        groups[group] = {"start": start, "end": end, "tokens": part.tokens, "bytes": part.bytes,
                         "documents": part.documents}
        start = end
    return {
        "file": path.name,
        "tokens": start,
        "bytes": sum(g["bytes"] for g in groups.values()),
        "documents": sum(g["documents"] for g in groups.values()),
        "groups": groups,
    }


def build(cfg: DataConfig, expected: str) -> dict:
    """Prepare cfg.dir from scratch (holding its lock); return the meta."""
    out, started = cfg.dir, time.time()
    stream = corpus_stream(cfg)
    print("data: reading the corpus to split it into training and validation documents", flush=True)
    inventory = Inventory(stream, cfg.val_fraction)
    tokenizer = make_tokenizer(cfg, stream, inventory)
    try:
        parts = tokenize(stream, inventory, tokenizer, out)
        splits = {split: join_parts(out / f"{split}.bin", parts[split]) for split in SPLITS}
        totals = {g: [sum(s["groups"].get(g, {}).get(k, 0) for s in splits.values()) for k in ("bytes", "tokens")]
                  for g in inventory.val}  # every group, in corpus order
        meta = {
            "fingerprint": expected,
            "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": bin_dtype(tokenizer.vocab_size).name,
            "splits": splits,
            "bytes_per_token": {g: round(b / max(t, 1), 3) for g, (b, t) in totals.items()},
        }
        temp_path(out / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
        temp_path(out / "meta.json").write_text(json.dumps(meta, indent=2))
        if fingerprint(cfg) != expected:  # a file edited, grown or shrunk while it was read
            raise changed("a file")
    except BaseException:  # a full disk, Ctrl-C, anything: the old files stay, the new ones go
        remove_debris(out)
        raise
    replace_prepared(out, ["tokenizer.json", *(s["file"] for s in splits.values())])
    print(f"data: prepared {out} in {time.time() - started:.0f}s: "
          + ", ".join(f"{s} {m['tokens']:,} tokens" for s, m in splits.items())
          + " | bytes/token " + ", ".join(f"{g} {v}" for g, v in meta["bytes_per_token"].items()))
    return meta


def replace_prepared(out: Path, names: list[str]) -> None:
    """Rename each staged temp file over `<name>`: meta.json goes first and comes back last, so the
    folder reads as complete only when it is."""
    try:
        (out / "meta.json").unlink(missing_ok=True)
        for name in [*names, "meta.json"]:
            temp_path(out / name).replace(out / name)
    except OSError as e:
        remove_debris(out)
        raise DataError(f"cannot move the new data into {out} ({e.strerror}): it is incomplete and is prepared "
                        "again on the next run; check that folder") from None


def write_failure(cfg: DataConfig, e: OSError) -> DataError:
    """A failed write in the data folder (or on the way to it) as one line: where, why, what to do."""
    folder = cfg.dir.resolve()
    where = Path(e.filename).resolve() if e.filename else folder  # a failed write() names no file
    if where != folder and folder not in where.parents and where not in folder.parents:
        return DataError(f"cannot use {e.filename} ({e.strerror or e}): check that it exists and can be read")
    fix = ("free space there or set data.root to a folder on a disk with room"
           if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable or set data.root to another folder")
    return DataError(f"cannot write the prepared data in {cfg.dir} ({e.strerror or e}): {fix}; "
                     "nothing already prepared there was replaced")


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
        raise write_failure(cfg, e) from None
    print(f"data: {cfg.dir} is up to date")
    return json.loads((cfg.dir / "meta.json").read_text())


if __name__ == "__main__":
    from common.cli import hydra_entry
    from common.settings import typed
    from trainer.config import RunConfig

    hydra_entry("train", "python -m data.prepare", RunConfig, lambda cfg: prepare(typed(DataConfig, cfg.data, "data.")),
                lambda cfg: f"nothing already prepared in {cfg.data.root}/{cfg.data.name} was replaced: run again to "
                            "prepare it")
