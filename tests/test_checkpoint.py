"""Checkpoints: atomic saves, and loads that never run code from the file."""
from __future__ import annotations

import os

import pytest
import torch

from data.tokenizer import train_bpe
from trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class RunsCode:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_loading_a_checkpoint_never_executes_code_from_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": RunsCode(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt is truncated or corrupt"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_save_replaces_the_checkpoint_atomically_and_leaves_no_temp_file(tmp_path):
    tokenizer = train_bpe(["some text to learn from"] * 5, vocab_size=260)
    save_checkpoint(tmp_path, {"step": 1, "weights": torch.zeros(3)}, tokenizer)
    save_checkpoint(tmp_path, {"step": 2, "weights": torch.ones(3)}, tokenizer)
    assert load_checkpoint(tmp_path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "tokenizer.json"]
