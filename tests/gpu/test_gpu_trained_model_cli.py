"""What a trained checkpoint does on a GPU through the real entry points in child processes:
sample.py's greedy text is the same with and without the KV cache, and `python -m heads.report`
writes its pictures, head view and metrics. One tiny model, trained once per session (per xdist
worker) by the `trained_gpu_run` fixture, serves these and tests/gpu/test_gpu_trained_model.py."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from .conftest import GPU_DEVICE, PROBES, REPO, GpuWorkspace, TrainedRun, run_gpu_entry

pytestmark = pytest.mark.gpu

METRICS = ("entropy", "distance", "prev_token", "sink", "induction")


def jsonl_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_greedy_samples_are_the_same_with_and_without_the_kv_cache(trained_gpu_run: TrainedRun,
                                                                     gpu_workspace: GpuWorkspace):
    # 40 new tokens after a short prompt run past block_size 32: the cache is refilled on the way
    args = [str(REPO / "sample.py"), f"out_dir={trained_gpu_run.out}", f"device={GPU_DEVICE}", "temperature=0",
            "max_new_tokens=40", 'prompt=["the king and", "国王"]', "format=jsonl"]
    # fp32 without TF32 (common/device.py turns it on for CUDA): its 10-bit products round one cached row and the
    # uncached window differently, and a near-tie of this random-word model's logits would flip a greedy token
    env = {**gpu_workspace.env, "NVIDIA_TF32_OVERRIDE": "0"}
    cached = run_gpu_entry([*args, "use_kv_cache=true"], cwd=gpu_workspace.tmp, env=env, timeout=180)
    uncached = run_gpu_entry([*args, "use_kv_cache=false"], cwd=gpu_workspace.tmp, env=env, timeout=180)
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert uncached.returncode == 0, uncached.stderr[-2000:]
    with_cache, without_cache = jsonl_records(cached.stdout), jsonl_records(uncached.stdout)
    assert [r["prompt"] for r in with_cache] == ["the king and", "国王"]
    assert all(len(r["tokens"]) == 40 for r in with_cache + without_cache)
    assert [r["tokens"] for r in with_cache] == [r["tokens"] for r in without_cache]
    assert [r["text"] for r in with_cache] == [r["text"] for r in without_cache]


def test_heads_report_writes_pictures_head_view_and_metrics(trained_gpu_run: TrainedRun, gpu_workspace: GpuWorkspace):
    result = run_gpu_entry(["-m", "heads.report", f"out_dir={trained_gpu_run.out}", f"device={GPU_DEVICE}"],
                           cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = trained_gpu_run.out / "heads"  # report_dir's default: <out_dir>/heads
    assert f"files to {folder}/" in result.stdout, result.stdout[-2000:]
    config = torch.load(trained_gpu_run.out / "ckpt.pt", map_location="cpu", weights_only=True)["model_config"]
    expected = {f"attn_maps_{p}_L{layer}.png" for p, layer in itertools.product(("en", "zh"),  # named by script
                                                                                 range(config["n_layer"]))}
    expected |= {"head_view.html", "metrics.json"}
    written = {path.name for path in folder.iterdir()}
    assert expected <= written, f"missing: {sorted(expected - written)}"
    assert all((folder / name).stat().st_size > 0 for name in expected)
    for metric in METRICS:  # one heatmap per metric and group
        assert any(name.startswith(f"attn_metrics_{metric}_") for name in written), metric
    assert any(name.startswith("attn_ablation_") for name in written)  # the head ablation ran on the GPU
    summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    # ckpt.pt (checkpoint=last) of the fixture's run, with the probes it stored
    assert summary["step"] == trained_gpu_run.steps
    assert [probe["text"] for probe in summary["probes"]] == PROBES
    for metric in METRICS:
        for group, values in summary["metrics"][metric].items():
            assert np.array(values).shape == (config["n_layer"], config["n_head"]), (metric, group)
            assert 0.0 <= summary["chance"][metric][group] <= 1.0
    assert "国" in (folder / "head_view.html").read_text(encoding="utf-8")
