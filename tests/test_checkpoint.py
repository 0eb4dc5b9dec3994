"""Checkpoints: atomic saves, last and best, refusals that keep what is on disk, and loads that
never run code from the file."""
from __future__ import annotations

import io
import os

import pytest
import torch
from conftest import small_tmpfs

from common.errors import UserError
from common.folders import check_writable
from data.tokenizer import train_bpe
from data.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_torch


class RunsCode:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_loading_a_checkpoint_never_executes_code_from_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": RunsCode(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt holds Python objects other than tensors .* nothing in it was run"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["some text to learn from"] * 5, vocab_size=260)


def state(step: int, value: float) -> dict:
    return {"step": step, "model": {"weight": torch.full((3,), value)}}


def test_save_replaces_the_checkpoint_atomically_and_leaves_no_temp_file(tmp_path, tokenizer):
    save_checkpoint(tmp_path, state(1, 0.0), tokenizer)
    save_checkpoint(tmp_path, state(2, 1.0), tokenizer)
    assert load_checkpoint(tmp_path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "tokenizer.json"]


def test_best_keeps_the_last_save_marked_best_while_last_moves_on(tmp_path, tokenizer):
    save_checkpoint(tmp_path, state(1, 1.0), tokenizer, best=True)
    save_checkpoint(tmp_path, state(2, 2.0), tokenizer, best=True)
    save_checkpoint(tmp_path, state(3, 3.0), tokenizer)  # val loss got worse
    assert load_checkpoint(tmp_path)["step"] == 3
    assert load_checkpoint(tmp_path, name="best.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt.pt", "tokenizer.json"]


def test_non_finite_weights_are_never_written_over_a_good_checkpoint(tmp_path, tokenizer):
    save_checkpoint(tmp_path, state(1, 1.0), tokenizer, best=True)
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "best.pt")}
    with pytest.raises(CheckpointError, match="not saving step 2: weight holds non-finite values"):
        save_checkpoint(tmp_path, state(2, float("nan")), tokenizer, best=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_full_disk_during_a_save_is_the_os_error_and_leaves_the_previous_checkpoint(tmp_path, tokenizer):
    out = tmp_path / "out"
    with small_tmpfs(out, "64k"):
        save_checkpoint(out, state(1, 1.0), tokenizer)
        before = (out / "ckpt.pt").read_bytes()
        big = {"step": 2, "model": {"weight": torch.ones(100_000)}}  # 400 KB on a 64 KB disk
        with pytest.raises(CheckpointError, match=r"\(No space left on device\): free disk space or choose a writable out_dir"):
            save_checkpoint(out, big, tokenizer)
        assert (out / "ckpt.pt").read_bytes() == before
        assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "tokenizer.json"]  # no temp file left


def test_an_out_dir_that_cannot_be_a_folder_is_reported_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="out_dir=.*a-file/out is not a writable folder"):
        check_writable(blocker / "out")


class CtrlCOnThirdWrite(io.BytesIO):
    """A file that gets a Ctrl-C in the middle of torch.save's writing."""

    writes = 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return super().write(data)


def test_a_ctrl_c_inside_torch_save_comes_back_as_keyboard_interrupt_not_a_runtime_error():
    # torch.save reports any failed write as "RuntimeError: ... unexpected pos"; the Ctrl-C must
    # reach the entry point as itself (one line, exit 130), not as a traceback
    with pytest.raises(KeyboardInterrupt):
        save_torch({"weights": torch.zeros(1000, 100), "more": torch.ones(1000, 100)}, CtrlCOnThirdWrite())



def test_resuming_names_each_training_setting_that_differs_from_the_checkpoints_run():
    """Through train.py: tests/test_resume_cli.py."""
    import dataclasses

    from trainer.config import RunConfig, TrainConfig
    from trainer.guards import changed_settings

    saved = dataclasses.asdict(RunConfig(train=TrainConfig(batch_size=8, learning_rate=1e-3)))
    now = dataclasses.asdict(RunConfig(seed=7, train=TrainConfig(batch_size=16, learning_rate=1e-3, resume="true")))
    assert changed_settings(saved, now) == ["seed 1337 -> 7", "train.batch_size 8 -> 16"]  # not resume itself
    assert changed_settings({}, now) == []  # a checkpoint without its config: nothing to compare
