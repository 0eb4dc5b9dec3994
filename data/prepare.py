"""Corpus -> split -> tokenizer -> token bins, once.

Writes into one folder: `train.bin` and `val.bin` (flat np.memmap token streams, uint16 or uint32,
documents separated by <|endoftext|>, each split laid out group by group), `tokenizer.json`, and
`meta.json` (sizes, bytes and tokens per group, bytes per token, the tokenizer hash and a
fingerprint of every input). Preparing again with the same inputs is a no-op; any change to the
sources, the cleaning, the split or the tokenizer settings rebuilds. meta.json is written last,
so a folder with a meta.json is complete.

Run alone: python -m data.prepare [data=custom data.text_paths=[...]]
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from data.config import DataConfig
from data.corpus import Document, split_documents
from data.sources import CLEANING_VERSION, DEFAULT_SOURCES, DataError, custom_documents, custom_fingerprint, default_corpus
from data.tokenizer import SPLIT_PATTERN, stock_tokenizer, train_bpe

META_VERSION = 1


def fingerprint(cfg: DataConfig) -> str:
    """Everything the bins depend on; cheap to compute (no download, no tokenizing)."""
    if cfg.text_paths:
        inputs = {"text": custom_fingerprint(list(cfg.text_paths))}
    else:
        inputs = {name: DEFAULT_SOURCES[name][0].sha256 if name in DEFAULT_SOURCES else name for name in cfg.sources}
    spec = {
        "meta_version": META_VERSION,
        "cleaning_version": CLEANING_VERSION,
        "inputs": inputs,
        "val_fraction": cfg.val_fraction,
        "tokenizer": [cfg.tokenizer_kind, cfg.vocab_size if cfg.tokenizer_kind == "bpe" else None, SPLIT_PATTERN],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def bin_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def is_prepared(cfg: DataConfig) -> bool:
    meta_path = cfg.dir / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        bins_ok = all((cfg.dir / s["file"]).is_file() and (cfg.dir / s["file"]).stat().st_size == s["tokens"] * itemsize
                      for s in meta["splits"].values())
        return meta["fingerprint"] == fingerprint(cfg) and bins_ok and (cfg.dir / "tokenizer.json").is_file()
    except (ValueError, KeyError, TypeError):
        return False  # unreadable meta: rebuild


def load_documents(cfg: DataConfig) -> list[Document]:
    if cfg.text_paths:
        return custom_documents(list(cfg.text_paths))
    if not cfg.sources:
        raise DataError("data.sources is empty and data.text_paths is not set: name a source or give text files")
    return default_corpus(list(cfg.sources), Path(cfg.downloads))


def write_split(path: Path, documents: list[Document], token_lists: list[list[int]], eot_id: int,
                dtype: np.dtype) -> dict:
    """Write one split as a flat token stream, group after group; return its layout for meta.json."""
    groups: dict[str, dict] = {}
    stream: list[int] = []
    for group in dict.fromkeys(d.group for d in documents):
        start = len(stream)
        n_bytes = n_tokens = n_docs = 0
        for doc, ids in zip(documents, token_lists):
            if doc.group != group:
                continue
            stream += ids
            stream.append(eot_id)
            n_bytes += len(doc.text.encode("utf-8"))
            n_tokens += len(ids)
            n_docs += 1
        groups[group] = {"start": start, "end": len(stream), "tokens": n_tokens, "bytes": n_bytes, "documents": n_docs}
    tmp = path.with_name(path.name + ".tmp")
    tokens = np.memmap(tmp, dtype=dtype, mode="w+", shape=(len(stream),))
    tokens[:] = np.asarray(stream, dtype=dtype)
    tokens.flush()
    del tokens
    tmp.replace(path)
    return {
        "file": path.name,
        "tokens": len(stream),
        "bytes": sum(g["bytes"] for g in groups.values()),
        "documents": sum(g["documents"] for g in groups.values()),
        "groups": groups,
    }


def prepare(cfg: DataConfig) -> dict:
    """Make sure cfg.dir holds bins, tokenizer and meta for this config; return the meta."""
    out = cfg.dir
    if is_prepared(cfg):
        print(f"data: {out} is up to date")
        return json.loads((out / "meta.json").read_text())
    started = time.time()
    documents = load_documents(cfg)
    train_docs, val_docs = split_documents(documents, cfg.val_fraction)
    if cfg.tokenizer_kind == "bpe":
        print(f"data: training a {cfg.vocab_size}-token BPE on {len(train_docs)} training documents")
        tokenizer = train_bpe((d.text for d in train_docs), cfg.vocab_size)
    else:
        tokenizer = stock_tokenizer(cfg.tokenizer_kind)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until meta is back
    tokenizer.save(out / "tokenizer.json")
    dtype = bin_dtype(tokenizer.vocab_size)
    splits = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        splits[split] = write_split(out / f"{split}.bin", docs, tokenizer.encode_batch([d.text for d in docs]),
                                    tokenizer.eot_id, dtype)
    groups = list(dict.fromkeys(d.group for d in documents))
    totals = {g: [sum(s["groups"].get(g, {}).get(k, 0) for s in splits.values()) for k in ("bytes", "tokens")]
              for g in groups}
    meta = {
        "fingerprint": fingerprint(cfg),
        "tokenizer_hash": tokenizer.hash,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "splits": splits,
        "bytes_per_token": {g: round(b / max(t, 1), 3) for g, (b, t) in totals.items()},
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out / "meta.json")
    print(f"data: prepared {out} in {time.time() - started:.0f}s: "
          + ", ".join(f"{s} {m['tokens']:,} tokens" for s, m in splits.items())
          + " | bytes/token " + ", ".join(f"{g} {v}" for g, v in meta["bytes_per_token"].items()))
    return meta


if __name__ == "__main__":
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(config_path="../config", config_name="train", version_base=None)
    def main(cfg: DictConfig) -> None:
        prepare(DataConfig(**OmegaConf.to_container(cfg.data, resolve=True)))

    main()
