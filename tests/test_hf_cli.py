"""Issue 18: `python -m data.export` as a user runs it, on a checkpoint folder written by the trainer's
own save_checkpoint: a Hugging Face folder that transformers loads with our logits and token ids,
and refusals as one `error:` line, exit 2."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CHINESE, ENGLISH, REPO, fresh_machine_env, small_tmpfs

from data.checkpoint import save_checkpoint
from data.tokenizer import train_bpe
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers", reason="the reference implementation (pip install -e .[test])")
transformers.logging.set_verbosity_error()


def write_run(out: Path, **settings) -> GPT:
    """A checkpoint folder (ckpt.pt, best.pt, tokenizer.json) as train.py leaves it, for a tiny model
    with noisy weights; returns the model."""
    tokenizer = train_bpe([" ".join(ENGLISH), "".join(CHINESE)] * 20, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          dropout=0.0, **settings)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "tokenizer_hash": tokenizer.hash,
             "step": 7}
    save_checkpoint(out, state, tokenizer, best=True)
    return model


def export(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.export", *overrides], cwd=REPO, env=fresh_machine_env(cwd),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def test_export_writes_a_folder_transformers_loads_with_our_logits_and_ids(tmp_path):
    model = write_run(tmp_path / "run")
    result = export(f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "run" / "hf"
    assert f"wrote {folder}/ (best checkpoint, step 7)" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json"]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    text = "the king and the queen 国王和王后 walk 123"
    idx = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        assert (theirs(idx).logits - model(idx)[0]).abs().max().item() <= 1e-5
    # and again, last checkpoint into another folder, over the previous export
    result = export(f"out_dir={tmp_path / 'run'}", "checkpoint=last", f"to={folder}", cwd=tmp_path)
    assert result.returncode == 0 and "(last checkpoint, step 7)" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("case", ["rope", "missing", "foreign", "tokenizer_only", "full_disk", "bad_choice"])
def test_export_refusals_are_one_line_exit_2(tmp_path, case):
    run = tmp_path / "run"
    disk = tmp_path / "disk"
    if case == "rope":
        write_run(run, pos_encoding="rope")
        expected = "error: model.pos_encoding=rope cannot be exported as GPT-2"
        overrides = [f"out_dir={run}"]
    elif case == "missing":
        expected = f"error: checkpoint folder {run} does not exist"
        overrides = [f"out_dir={run}"]
    elif case == "foreign":
        write_run(run)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        expected = f"error: {tmp_path / 'mine'} exists and is not a previous export"
        overrides = [f"out_dir={run}", f"to={tmp_path / 'mine'}"]
    elif case == "tokenizer_only":  # a folder of the user's that happens to hold a tokenizer.json: not replaced
        write_run(run)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "tokenizer.json").write_text("keep")
        expected = f"error: {tmp_path / 'mine'} exists and is not a previous export (it holds tokenizer.json)"
        overrides = [f"out_dir={run}", f"to={tmp_path / 'mine'}"]
    elif case == "full_disk":
        write_run(run)
        expected = f"error: cannot write {disk / 'hf'} (No space left on device): free disk space"
        overrides = [f"out_dir={run}", f"to={disk / 'hf'}"]
    else:
        expected = "error: checkpoint='newest' must be"
        overrides = [f"out_dir={run}", "checkpoint=newest"]
    with small_tmpfs(disk, "64k") if case == "full_disk" else contextlib.nullcontext():  # ~150 kB do not fit
        line = one_error_line(export(*overrides, cwd=tmp_path))
        assert not disk.exists() or list(disk.iterdir()) == []  # nothing half-written
    assert line.startswith(expected), line
    assert not (run / "hf").exists()
    if case in ("foreign", "tokenizer_only"):
        assert [p.read_text() for p in (tmp_path / "mine").iterdir()] == ["keep"]
