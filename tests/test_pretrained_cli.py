"""Issue 18 as a user runs it: init_from in train.py, sample.py and python -m heads.report, each in
a child process, on a tiny GPT-2 folder that transformers saved (tests/conftest.py's
make_tiny_gpt2). Fine-tuning starts from the pretrained weights (step 0's val loss is the loaded
model's on the same windows), writes checkpoints that sample, report and resume like any run's;
sampling the folder itself gives GPT2LMHeadModel.generate's greedy tokens; its report has maps,
metrics with chance and the head view; a model that cannot be had (no network, no such folder, a
context past its positions) is one `error:` line, exit 2, within seconds, nothing written.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, fresh_machine_env, make_tiny_corpus, make_tiny_gpt2, run_entry, tiny_args

from common.settings import typed
from data.batches import TokenBins, evaluate
from data.checkpoint import load_model
from data.config import DataConfig
from data.gpt2 import gpt2_tokenizer, load_gpt2

transformers = pytest.importorskip("transformers", reason="the reference implementation (pip install -e .[test])")
transformers.logging.set_verbosity_error()

BLOCK = 32  # tests/conftest.py's TINY model.block_size; the tiny GPT-2 has 64 positions
STEPS = ["train.max_iters=10", "train.eval_interval=5", "dtype=float32", "wandb.mode=disabled"]


@pytest.fixture
def tiny(tmp_path) -> dict:
    corpus = make_tiny_corpus(tmp_path / "corpus")
    return {"tmp": tmp_path, "corpus": corpus, "model": make_tiny_gpt2(tmp_path / "tiny-gpt2", corpus),
            "env": fresh_machine_env(tmp_path)}


def heads_report(*overrides: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """python -m heads.report as a user runs it."""
    return subprocess.run([sys.executable, "-m", "heads.report", *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_fine_tuning_starts_from_the_pretrained_weights_and_its_run_samples_reports_and_resumes(tiny):
    tmp, folder, run = tiny["tmp"], tiny["model"], tiny["tmp"] / "run"
    args = [*tiny_args(tiny["corpus"], tmp / "prepared"), *STEPS, f"init_from={folder}", f"out_dir={run}"]
    out = ok(run_entry("train.py", *args, cwd=tmp, env=tiny["env"]))
    assert f"init_from={folder} ({folder}): from the checkpoint vocab_size=300, n_layer=2" in out
    assert f"of the model group only model.block_size={BLOCK}, model.dropout=0.0, model.attn_impl=explicit, model.attn_tile=64 apply" in out
    # the data was tokenized with the model's tokenizer, into a folder of its own
    data = typed(DataConfig, {"name": "custom", "root": str(tmp / "prepared"), "text_paths": [str(tiny["corpus"])],
                              "tokenizer_kind": str(folder)}, "data.")
    assert [p.name for p in (tmp / "prepared").iterdir()] == [data.dir.name]
    bins = TokenBins(data.dir)
    assert bins.tokenizer.hash == gpt2_tokenizer(folder).hash
    # step 0 evaluates the pretrained weights: the loaded model's loss on the same fixed windows
    printed = float(re.search(r"eval step 0 \([^)]*\): val loss (\d+\.\d+)", out)[1])
    pretrained, _ = load_gpt2(folder, block_size=BLOCK)
    expected = evaluate(pretrained, bins, BLOCK, 4, 8, torch.device("cpu"), torch.float32)["val/loss"]
    assert printed == pytest.approx(expected, abs=1e-4)
    assert "done in" in out and "at step 10" in out
    # the checkpoint is a run like any other: tokenizer.json beside it, it loads, samples and reports
    model, tokenizer, checkpoint = load_model(run, "cpu", "last")
    assert tokenizer.hash == bins.tokenizer.hash and checkpoint["config"]["init_from"] == str(folder)
    assert not torch.equal(model.wte.weight, pretrained.wte.weight)  # it trained
    sampled = ok(run_entry("sample.py", f"out_dir={run}", "max_new_tokens=8", "device=cpu", cwd=tmp, env=tiny["env"]))
    assert "--- sample 1/3 (prompt 'ROMEO:') ---" in sampled
    report = ok(heads_report(f"out_dir={run}", f"report_dir={tmp / 'report'}", "device=cpu", cwd=tmp, env=tiny["env"]))
    assert "no validation data" not in report and "silencing one head costs the most" in report  # the val data's
    assert (tmp / "report" / "head_view.html").is_file() and (tmp / "report" / "metrics.json").is_file()
    # and it resumes
    resumed = ok(run_entry("train.py", *args, "train.max_iters=15", cwd=tmp, env=tiny["env"]))
    assert f"resuming from {run / 'ckpt.pt'} at step 10" in resumed and "at step 15" in resumed


def test_sampling_a_pretrained_folder_gives_transformers_greedy_tokens(tiny):
    folder, prompt, n = tiny["model"], "the king and the queen", 12
    text = ok(run_entry("sample.py", f"init_from={folder}", f"prompt={prompt}", "max_new_tokens=20", "device=cpu",
                        cwd=tiny["tmp"], env=tiny["env"]))
    assert text.startswith(f"--- sample 1/1 (prompt '{prompt}') ---\n{prompt}")
    result = ok(run_entry("sample.py", f"init_from={folder}", f"prompt={prompt}", f"max_new_tokens={n}", "temperature=0",
                          "format=jsonl", "device=cpu", cwd=tiny["tmp"], env=tiny["env"]))
    ours = json.loads(result.splitlines()[0])["tokens"]
    ids = torch.tensor([gpt2_tokenizer(folder).encode(prompt)])
    reference = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    theirs = reference.generate(ids, do_sample=False, max_new_tokens=n, attention_mask=torch.ones_like(ids),
                                pad_token_id=299)[0, ids.shape[1]:].tolist()
    # transformers stops at <|endoftext|> (299, eos_token_id); ours goes on to max_new_tokens
    assert len(ours) == n and ours[:len(theirs)] == theirs and (len(theirs) == n or theirs[-1] == 299)


def test_the_report_of_a_pretrained_folder_has_maps_metrics_and_the_head_view(tiny):
    tmp, folder = tiny["tmp"], tiny["model"]
    out = ok(heads_report(f"init_from={folder}", f"report_dir={tmp / 'report'}", "device=cpu", cwd=tmp, env=tiny["env"]))
    assert "using an English, a Chinese and a pair line" in out and "the metrics use the probes alone" in out
    files = sorted(p.name for p in (tmp / "report").iterdir())
    assert {"head_view.html", "metrics.json", "attn_maps_en_L0.png", "attn_maps_zh_L1.png"} <= set(files)
    assert any(name.startswith("attn_metrics_") for name in files)
    metrics = json.loads((tmp / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert [p["name"] for p in metrics["probes"]] == ["en", "zh", "pairs"] and metrics["step"] is None
    assert set(metrics["chance"]["prev_token"]) == {"en", "zh", "pairs"}  # per-head metrics beside chance
    assert "<html" in (tmp / "report" / "head_view.html").read_text(encoding="utf-8").lower()
    # without report_dir it goes to heads-<model> in the working folder
    ok(heads_report(f"init_from={folder}", "device=cpu", "ablation_windows=0", cwd=tmp, env=tiny["env"]))
    assert (tmp / "heads-tiny-gpt2" / "metrics.json").is_file()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", ["offline", "no-network", "sample-offline", "report-offline", "no-folder",
                                  "long-context"])
def test_a_model_that_cannot_be_had_is_one_line_exit_2_within_seconds(tiny, case):
    tmp, env = tiny["tmp"], dict(tiny["env"], HF_HOME=str(tiny["tmp"] / "hf-home"))  # an empty hub cache
    if case == "no-network":  # a hub nobody answers for: what a machine without network meets
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    else:
        env["HF_HUB_OFFLINE"] = "1"
    init_from = {"no-folder": "/no/such/folder", "long-context": str(tiny["model"])}.get(case, "gpt2")
    overrides = [f"init_from={init_from}", "device=cpu"]
    started = time.perf_counter()
    if case == "report-offline":
        result = heads_report(*overrides, cwd=tmp, env=env)
    elif case == "sample-offline":
        result = run_entry("sample.py", *overrides, cwd=tmp, env=env)
    else:
        extra = ["model.block_size=128"] if case == "long-context" else []
        result = run_entry("train.py", *tiny_args(tiny["corpus"], tmp / "prepared"), *STEPS, *overrides, *extra,
                           f"out_dir={tmp / 'run'}", cwd=tmp, env=env)
    assert time.perf_counter() - started < 30  # the interpreter's start included: no waiting on a network
    line = one_error_line(result)
    if init_from == "gpt2":
        assert line.startswith("error: could not download 'gpt2' from the Hugging Face hub (")
        assert "hf download openai-community/gpt2" in line and line.endswith("init_from=/path/to/gpt2")
    elif case == "no-folder":
        assert line.startswith("error: init_from='/no/such/folder' must be gpt2, gpt2-medium, gpt2-large, gpt2-xl or "
                               "a folder in Hugging Face format")
    else:
        assert line.startswith(f"error: model.block_size=128 is longer than {tiny['model']}/config.json's "
                               "n_positions=64")
    assert not (tmp / "run").exists() and not (tmp / "prepared").exists() and not (tmp / "heads-gpt2").exists()
