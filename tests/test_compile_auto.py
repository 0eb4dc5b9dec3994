"""compile=auto: train.py compiles its step on CUDA and trains eagerly elsewhere, and a compiled run says
once how long the compiler took. Proved in this process on the CPU, with torch.compile recorded instead
of run (a real compile of the CPU preset: trainer/README.md); tests/gpu/ compiles for real on a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import composed, make_tiny_corpus, tiny_args

import train
from common.errors import ConfigError
from common.settings import typed
from trainer import distributed, guards
from trainer.config import RunConfig


def run_config(*overrides: str) -> RunConfig:
    return typed(RunConfig, composed("train", *overrides), "")


@pytest.mark.parametrize("setting,device_type,compiles", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("auto", "mps", False),
    ("true", "cpu", True), ("false", "cuda", False),
])
def test_auto_compiles_on_cuda_only_and_true_or_false_decide_everywhere(setting, device_type, compiles):
    assert run_config(f"compile={setting}").compiles(device_type) == compiles


def test_compile_defaults_to_auto_and_a_bad_value_is_one_line():
    assert run_config().compile == "auto"
    with pytest.raises(ConfigError, match=r"^compile='maybe' must be one of auto, true, false: auto compiles on "
                                          r"CUDA only: a 2-core CPU spent \d+ s of the CPU preset's 420 s compiling"):
        run_config("compile=maybe")


@pytest.mark.parametrize("setting,compiled", [("auto", False), ("true", True)])
def test_a_compiled_run_prints_the_first_steps_compile_time_once(setting, compiled, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(module) or module)
    monkeypatch.setattr(train, "peak_flops", lambda device, dtype: (1e12, "a test peak"))  # no 2 s CPU measurement
    corpus = make_tiny_corpus(tmp_path / "corpus")
    cfg = run_config(*tiny_args(corpus, tmp_path / "prepared"), f"compile={setting}", f"out_dir={tmp_path / 'out'}",
                     "train.max_iters=10", "train.eval_interval=10", "wandb.mode=disabled", "dtype=float32")
    train.train(cfg, distributed.Ranks(), "cpu", guards.LastSave(Path(cfg.out_dir)))
    out = capsys.readouterr().out
    assert len(calls) == int(compiled)
    assert f"compile={str(compiled).lower()}, " in out
    assert out.count("compiled the training step in ") == int(compiled)
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(progress) == 2 and all(", MFU " in line for line in progress)
