"""What a trained checkpoint does on a GPU: sample.py's greedy text is the same with and without
the KV cache, compiled decoding replays CUDA graphs and gives the eager tokens, and
`python -m heads.report` writes its pictures, head view and metrics. One tiny model, trained
once by the `trained_gpu_run` fixture, serves all three."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from .conftest import GPU_DEVICE, ON_CPU, PROBES, REPO, GpuWorkspace, TrainedRun, not_on_cpu, run_gpu_entry

pytestmark = pytest.mark.gpu

METRICS = ("entropy", "distance", "prev_token", "sink", "induction")


def jsonl_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_greedy_samples_are_the_same_with_and_without_the_kv_cache(trained_gpu_run: TrainedRun,
                                                                     gpu_workspace: GpuWorkspace):
    # 40 new tokens after a short prompt run past block_size 32: the cache is refilled on the way
    args = [str(REPO / "sample.py"), f"out_dir={trained_gpu_run.out}", f"device={GPU_DEVICE}", "temperature=0",
            "max_new_tokens=40", 'prompt=["the king and", "国王"]', "format=jsonl"]
    cached = run_gpu_entry([*args, "use_kv_cache=true"], cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=180)
    uncached = run_gpu_entry([*args, "use_kv_cache=false"], cwd=gpu_workspace.tmp, env=gpu_workspace.env, timeout=180)
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert uncached.returncode == 0, uncached.stderr[-2000:]
    with_cache, without_cache = jsonl_records(cached.stdout), jsonl_records(uncached.stdout)
    assert [r["prompt"] for r in with_cache] == ["the king and", "国王"]
    assert all(len(r["tokens"]) == 40 for r in with_cache + without_cache)
    assert [r["tokens"] for r in with_cache] == [r["tokens"] for r in without_cache]
    assert [r["text"] for r in with_cache] == [r["text"] for r in without_cache]


def test_compiled_decoding_replays_cuda_graphs_and_gives_the_eager_tokens(trained_gpu_run: TrainedRun, monkeypatch):
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils

    from trainer.checkpoint import load_model

    # compile_decoding sets these for the whole process: put them back after this test
    for key in ("freezing", "autotune_num_choices_displayed", "max_autotune_report_choices_stats"):
        monkeypatch.setattr(inductor_config, key, getattr(inductor_config, key))
    torch._dynamo.reset()  # no compiled code, CUDA graph tree or counter left from anything before
    counters.clear()
    # why a CUDA graph was skipped: inductor logs it to an artifact logger that is off by default
    skip_reasons: list[str] = []

    def record_skip(message: str, *args, **kwargs) -> None:
        skip_reasons.append(str(message) % args if args else str(message))

    monkeypatch.setattr(cudagraph_utils.cudagraphs_log, "warning", record_skip)
    # every replay of a recorded graph, the steady state of CUDA graph decoding
    replays: list[int] = []
    if not ON_CPU:
        replay = torch.cuda.CUDAGraph.replay

        def counted_replay(graph: torch.cuda.CUDAGraph) -> None:
            replays.append(1)
            replay(graph)

        monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted_replay)

    try:
        model, tokenizer, _ = load_model(trained_gpu_run.out, GPU_DEVICE)
        idx = torch.tensor([tokenizer.encode("the king and")], device=GPU_DEVICE)
        new_tokens = 40  # past block_size 32: the compiled step, then refills of the sliding window
        eager = model.generate(idx, new_tokens, temperature=0).tolist()
        model.compile_decoding()
        first = model.generate(idx, new_tokens, temperature=0).tolist()  # compiles, warms up, records
        before_second = len(replays)
        second = model.generate(idx, new_tokens, temperature=0).tolist()  # replays
        assert first == eager and second == eager, f"eager {eager}\ncompiled {first}\nagain {second}"
        if ON_CPU:
            pytest.skip(not_on_cpu("CUDA graphs"))

        from torch._inductor import cudagraph_trees

        assert counters["inductor"]["cudagraph_skips"] == 0, f"CUDA graphs skipped: {skip_reasons}"
        device_index = torch.device(GPU_DEVICE).index
        manager = cudagraph_trees.get_manager(torch.cuda.current_device() if device_index is None else device_index,
                                              create_if_none_exists=False)
        # a recorded graph hangs from a root of the tree; warm-up runs are not recorded nodes
        recorded = 0 if manager is None else sum(len(nodes) for nodes in manager.roots.values())
        assert recorded > 0, f"no CUDA graph was recorded (tree manager: {manager}); skip reasons: {skip_reasons}"
        # with a 3-token prompt and block_size 32, 29 of the 40 steps go through the compiled step
        decode_steps = model.config.block_size - idx.size(1)
        assert len(replays) - before_second >= decode_steps, (
            f"{len(replays) - before_second} CUDA graph replays in a generation of {decode_steps} compiled steps")
    finally:
        torch._dynamo.reset()  # frees the compiled code and its CUDA graph memory pool


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
