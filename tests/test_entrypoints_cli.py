"""train.py, sample.py and python -m heads.report through their real entry points, each in a child
process, on a tiny corpus and model."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    ENGLISH,
    PROBES,
    fresh_machine_env,
    make_tiny_corpus,
    run_entry,
    run_history,
    small_tmpfs,
    tiny_args,
)

from data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One tiny training run on a fresh machine (no wandb key), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    corpus = make_tiny_corpus(tmp / "corpus")
    env = fresh_machine_env(tmp)
    overrides = [*tiny_args(corpus, tmp / 'prepared'), f"out_dir={tmp / 'out'}",
                 "wandb.attn_every=15", f"wandb.probes=[{PROBES[0]!r},{PROBES[1]!r}]"]
    result = run_entry("train.py", *overrides, cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"tmp": tmp, "out": tmp / "out", "env": env, "overrides": overrides, "stdout": result.stdout}


def test_train_reports_progress_eval_and_saves_a_checkpoint(run):
    stdout = run["stdout"]
    assert "step 30/30 | loss" in stdout and "tok/s" in stdout and "ETA" in stdout
    assert "eval step 30 (" in stdout and "val loss" in stdout and "bpb" in stdout
    checkpoint = torch.load(run["out"] / "ckpt.pt", weights_only=True)
    assert checkpoint["step"] == 30
    assert set(checkpoint) >= {"model", "optimizers", "model_config", "config", "tokenizer_hash", "probes"}
    assert (run["out"] / "tokenizer.json").is_file()
    assert not (run["tmp"] / "outputs").exists()  # hydra writes nothing and does not chdir


def test_a_time_budget_stops_training_with_an_evaluated_checkpoint(run, tmp_path):
    out = tmp_path / "out"
    result = run_entry("train.py", *run["overrides"], "train.max_iters=100000", "train.max_seconds=3",
                       "wandb.mode=disabled", f"out_dir={out}", cwd=tmp_path, env=run["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    step = checkpoint["step"]
    assert 0 < step < 100000 and f"eval step {step} (" in result.stdout
    assert (f"at step {step} (the time budget train.max_seconds=3 ran out first), "
            f"val bpb {checkpoint['val_metrics']['val/bpb']:.3f}: checkpoint in") in result.stdout


def test_wandb_goes_offline_by_itself_without_a_key(run):
    runs = list((run["out"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert "wandb sync" in run["stdout"]


def test_attention_report_lands_in_the_offline_run(run):
    (run_dir,) = (run["out"] / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    for step in (0, 15, 30):  # before training, every wandb.attn_every steps, and at the end
        for probe, layer in itertools.product(("en", "zh"), (0, 1)):  # custom probes named by their script
            # wandb.pictures=auto on a CPU: the final report's PNGs only, the head view at every report
            assert bool(list((media / "images" / "attn_maps" / probe).glob(f"L{layer}_{step}_*.png"))) == (step == 30)
        for metric in ("entropy", "distance", "prev_token", "sink", "induction"):  # one heatmap per metric and group,
            assert bool(list((media / "images" / "attn_metrics" / metric).glob(f"*_{step}_*.png"))) == (step == 30)  # final
        (page,) = (media / "html").glob(f"attn_head_view_{step}_*.html")
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "国" in text
    assert list((media / "images" / "attn_ablation").glob("*_30_*.png"))  # wandb.ablation=final: the last report
    assert not list((media / "images" / "attn_ablation").glob("*_15_*.png"))
    (table,) = (media / "table").glob("attn_table_30_*.table.json")
    tokens = {cell for row in json.loads(table.read_text(encoding="utf-8"))["data"] for cell in row if isinstance(cell, str)}
    assert any("\u4e00" <= ch <= "\u9fff" for token in tokens for ch in token)  # Chinese characters, not bytes
    history = run_history(run_dir)
    final = [row for row in history if row.get("_step") == 30 and any(k.endswith("/L0H0/entropy") for k in row)]
    assert final, "no per-head scalars at the last step"
    groups = {key.split("/")[1] for key in final[0] if key.startswith("val_heads/")}
    assert groups == {"text"}  # data=custom: one group of documents
    for group, layer, head, metric in itertools.product(groups, (0, 1), (0, 1), ("entropy", "distance", "prev_token", "sink", "induction")):
        low = -1.0 if metric == "induction" else 0.0  # induction is a gain: the repeat's weight minus the text's
        assert low <= final[0][f"val_heads/{group}/L{layer}H{head}/{metric}"] <= 1.0  # every metric on a 0-1 scale
    assert any(key.startswith("attn_chart/entropy/") for key in final[0])  # a chart per metric, a line per head
    assert "attention heads past chance by their margin: " in run["stdout"]
    assert "attention report at step 15 in" in run["stdout"] and "(no pictures until the final report: wandb.pictures=auto)" in run["stdout"]
    assert "silencing one head costs the most bits per byte: " in run["stdout"]


def test_heads_report_writes_pictures_view_and_metrics_for_a_checkpoint(run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={run['out']}", f"report_dir={tmp_path / 'heads'}"],
                            cwd=tmp_path, env=run["env"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    written = {p.name for p in (tmp_path / "heads").iterdir()}
    assert {"attn_maps_en_L0.png", "attn_maps_zh_L1.png", "head_view.html", "metrics.json"} <= written
    assert any(name.startswith("attn_metrics_induction_") for name in written)
    assert any(name.startswith("attn_ablation_") for name in written)
    summary = json.loads((tmp_path / "heads" / "metrics.json").read_text(encoding="utf-8"))
    assert summary["step"] == 30 and [p["text"] for p in summary["probes"]] == PROBES  # probes stored in the checkpoint
    for group, values in summary["metrics"]["sink"].items():
        assert np.array(values).shape == (2, 2) and 0 < summary["chance"]["sink"][group] < 1
    assert set(summary["ablation"]["delta_bpb"]) >= {"all"} and summary["windows"]


def test_heads_report_on_a_full_disk_is_one_line_and_leaves_no_empty_file(run, tmp_path):
    with small_tmpfs(tmp_path / "disk", "200k") as disk:  # a few of the report's ~20 PNGs fit
        result = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={run['out']}",
                                 f"report_dir={disk / 'heads'}"], cwd=tmp_path, env=run["env"], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=300)
        written = {p.name: p.stat().st_size for p in (disk / "heads").iterdir()}
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: report_dir={disk / 'heads'} cannot be written (No space left on device): choose another report_dir "
        "or free some space")
    assert written and all(size > 0 and name.endswith(".png") for name, size in written.items()), written


def test_wandb_disabled_writes_and_computes_nothing(run, tmp_path):
    out = tmp_path / "out"
    result = run_entry("train.py", *run["overrides"], "train.max_iters=5", f"out_dir={out}", "wandb.mode=disabled",
                       cwd=tmp_path, env=run["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "ckpt.pt").is_file() and not (out / "wandb").exists()
    assert not any(Path(run["env"]["WANDB_DIR"]).iterdir())
    assert "attention report" not in result.stdout


def samples_of(stdout: str) -> list[str]:
    """The sample texts printed by sample.py, without their header lines."""
    chunks = stdout.split("--- sample ")[1:]
    return [chunk.split("---\n", 1)[1].rstrip("\n") for chunk in chunks]


def test_sample_prints_num_samples_per_prompt_each_starting_with_it(run):
    args = [f"out_dir={run['out']}", "num_samples=2", "max_new_tokens=20", 'prompt=["the king", "国王"]']
    result = run_entry("sample.py", *args, cwd=run["tmp"], env=run["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    texts = samples_of(result.stdout)
    assert len(texts) == 4
    assert [t[: len(p)] for t, p in zip(texts, ["the king"] * 2 + ["国王"] * 2)] == ["the king"] * 2 + ["国王"] * 2
    assert all(len(t) > len("the king") for t in texts)
    again = run_entry("sample.py", *args, cwd=run["tmp"], env=run["env"])
    assert again.stdout == result.stdout  # same seed, same text


def test_greedy_samples_are_the_same_with_and_without_kv_cache(run):
    # 40 new tokens after a 3-token prompt run past the tiny model's block_size of 32
    args = [f"out_dir={run['out']}", "temperature=0", "max_new_tokens=40", "prompt=the king and"]
    cached = run_entry("sample.py", *args, "use_kv_cache=true", cwd=run["tmp"], env=run["env"])
    uncached = run_entry("sample.py", *args, "use_kv_cache=false", cwd=run["tmp"], env=run["env"])
    assert cached.returncode == 0 and uncached.returncode == 0, cached.stderr[-2000:] + uncached.stderr[-2000:]
    assert cached.stdout == uncached.stdout


@pytest.mark.slow
def test_compiled_decoding_samples_the_same_greedy_text(run):
    args = [f"out_dir={run['out']}", "temperature=0", "max_new_tokens=24", "stream=false"]
    eager = run_entry("sample.py", *args, cwd=run["tmp"], env=run["env"])
    compiled = run_entry("sample.py", *args, "compile=true", cwd=run["tmp"], env=run["env"])
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert compiled.stdout == eager.stdout


def test_compiling_with_a_full_cache_disk_is_one_line(run, tmp_path):
    with small_tmpfs(tmp_path / "cache", "8k") as cache:
        (cache / "filler").write_bytes(b"x" * 8192)
        result = run_entry("sample.py", f"out_dir={run['out']}", "compile=true", "max_new_tokens=2", cwd=run["tmp"],
                           env={**run["env"], "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")})
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: torch.compile cannot write its cache in {cache / 'inductor'} (No space left on device): free space "
        "there, set TORCHINDUCTOR_CACHE_DIR to a folder with room, or use compile=false"), result.stderr[-3000:]


def test_empty_prompt_starts_from_endoftext(run):
    result = run_entry("sample.py", f"out_dir={run['out']}", "prompt=", "max_new_tokens=15", cwd=run["tmp"], env=run["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    (text,) = samples_of(result.stdout)
    assert text and "<|endoftext|>" not in text


def test_streaming_prints_exactly_what_non_streaming_prints(run):
    args = [f"out_dir={run['out']}", "max_new_tokens=40", "prompt='国王'", "temperature=1.0", "top_k=20"]
    streamed = run_entry("sample.py", *args, "stream=true", cwd=run["tmp"], env=run["env"])
    whole = run_entry("sample.py", *args, "stream=false", cwd=run["tmp"], env=run["env"])
    assert streamed.returncode == 0 and whole.returncode == 0, streamed.stderr[-2000:] + whole.stderr[-2000:]
    assert streamed.stdout == whole.stdout


def test_jsonl_output_parses_one_object_per_sample(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the king\n\n国王\n", encoding="utf-8")
    result = run_entry("sample.py", f"out_dir={run['out']}", f"prompt_file={prompts}", "num_samples=2",
                       "max_new_tokens=12", "format=jsonl", cwd=run["tmp"], env=run["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [("the king", 0), ("the king", 1), ("国王", 0), ("国王", 1)]
    assert all(len(r["tokens"]) == 12 and r["tokens_per_second"] > 0 and isinstance(r["text"], str) for r in records)


@pytest.mark.parametrize("override,message", [  # checked once a checkpoint is looked for; each rule: tests/test_settings.py
    ("prompt_file=/nonexistent/prompts.txt", "prompt_file=/nonexistent/prompts.txt does not exist"),
    ("checkpoint=middle", "checkpoint='middle' must be one of last, best"),
])
def test_sample_rejects_bad_settings_with_exit_code_2(run, override, message):
    result = run_entry("sample.py", f"out_dir={run['out']}", *override.split(), cwd=run["tmp"], env=run["env"])
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sample_names_the_byte_offset_of_a_prompt_file_that_is_not_utf8(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("ok\nJosé".encode("latin-1"))
    result = run_entry("sample.py", f"out_dir={run['out']}", f"prompt_file={prompts}", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2
    assert f"prompt_file={prompts} is not UTF-8 text (invalid byte 0xe9 at byte offset 6)" in result.stderr


def test_sample_names_a_missing_or_corrupt_checkpoint(run, tmp_path):
    result = run_entry("sample.py", f"out_dir={tmp_path / 'nothing'}", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2 and "nothing does not exist" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt.pt").write_bytes((run["out"] / "ckpt.pt").read_bytes()[:1000])
    (broken / "tokenizer.json").write_bytes((run["out"] / "tokenizer.json").read_bytes())
    result = run_entry("sample.py", f"out_dir={broken}", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2 and "best.pt is missing" in result.stderr and "checkpoint=last" in result.stderr
    result = run_entry("sample.py", f"out_dir={broken}", "checkpoint=last", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2 and "ckpt.pt is truncated or corrupt" in result.stderr
    (broken / "ckpt.pt").write_bytes((run["out"] / "ckpt.pt").read_bytes())
    (broken / "tokenizer.json").unlink()
    result = run_entry("sample.py", f"out_dir={broken}", "checkpoint=last", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2 and "tokenizer.json is missing" in result.stderr


def test_training_keeps_the_last_and_the_best_checkpoint(run):
    last = torch.load(run["out"] / "ckpt.pt", weights_only=True)
    best = torch.load(run["out"] / "best.pt", weights_only=True)
    assert last["step"] == 30 and best["val_metrics"]["val/loss"] == best["best_val_loss"] == last["best_val_loss"]
    assert best["best_val_loss"] <= last["val_metrics"]["val/loss"]
    assert run["stdout"].count("new best") >= 1


@pytest.mark.parametrize("override,message", [  # checked against the data and the machine; each rule: tests/test_settings.py
    ("model.n_head=3", "model.n_embd=32 is not divisible by model.n_head=3"),
    ("model.block_size=100000", "model.block_size=100000 is not smaller than the"),
    pytest.param("device=cuda", "device=cuda but no CUDA GPU is visible", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a CUDA GPU is visible: device=cuda is no error here")),
    ("dtype=float16", "dtype=float16 is not supported on CPU: use bfloat16 or float32"),
])
def test_train_rejects_bad_config_with_exit_code_2(run, tmp_path, override, message):
    result = run_entry("train.py", *run["overrides"], f"out_dir={tmp_path / 'out'}", override, cwd=tmp_path, env=run["env"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "ckpt.pt").exists()


@pytest.mark.parametrize("too_short", ["characters", "tokens"])
def test_a_probe_too_short_is_refused_before_out_dir_or_a_wandb_run_is_made(run, tmp_path, too_short):
    if too_short == "characters":
        probe, message = "a", ("error: wandb.probes=['a'] must be texts of 2 characters or more (a probe needs 2 tokens "
                               "to show attention)")
    else:  # a word the run's BPE made into one token: found only once the data is prepared
        tokenizer = Tokenizer.load(run["tmp"] / "prepared" / "custom" / "tokenizer.json")
        probe = next(word for word in ENGLISH if len(word) >= 2 and len(tokenizer.encode(word)) == 1)
        message = f"error: probe 'en' ('{probe}') has fewer than 2 tokens: give a longer probe text"
    result = run_entry("train.py", *run["overrides"], f"out_dir={tmp_path / 'out'}", f"wandb.probes=[{probe}]",
                       "wandb.mode=offline", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_train_names_a_file_that_is_not_utf8(run, tmp_path):
    corpus = tmp_path / "corpus"
    make_tiny_corpus(corpus)
    (corpus / "bad.txt").write_bytes(b"ok \xff\xfe broken")
    result = run_entry("train.py", *run["overrides"], f"data.text_paths=[{corpus}]", f"data.root={tmp_path / 'prep'}",
                       f"out_dir={tmp_path / 'out'}", cwd=tmp_path, env=run["env"])
    assert result.returncode == 2
    assert "bad.txt is not UTF-8 text (invalid byte 0xff at byte offset 3)" in result.stderr
