"""What a trained checkpoint does on a GPU, in this process: compiled decoding replays CUDA graphs
and gives the eager tokens. The checkpoint is the session's `trained_gpu_run` (gpu/conftest.py),
which tests/gpu/test_gpu_trained_model_cli.py's sample.py and heads.report runs share."""
from __future__ import annotations

import pytest
import torch

from .conftest import GPU_DEVICE, ON_CPU, TrainedRun, not_on_cpu

pytestmark = pytest.mark.gpu


def test_compiled_decoding_replays_cuda_graphs_and_gives_the_eager_tokens(trained_gpu_run: TrainedRun, monkeypatch):
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils

    from data.checkpoint import load_model

    # Engine.compile sets these for the whole process: put them back after this test
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
        model.engine.compile()
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


def test_cuda_graph_decoding_replays_one_graph_per_token_and_gives_the_eager_tokens(trained_gpu_run: TrainedRun):
    import time

    from data.checkpoint import load_model

    if ON_CPU:
        pytest.skip(not_on_cpu("CUDA graphs (tests/test_cuda_graph_decoding.py replays a CPU stand-in)"))
    model, tokenizer, _ = load_model(trained_gpu_run.out, GPU_DEVICE)
    model.eval()
    idx = torch.tensor([tokenizer.encode("the king and")], device=GPU_DEVICE)
    new_tokens = 40  # past block_size 32: replays while the sequence fits, then refills
    eager = model.generate(idx, new_tokens, temperature=0).tolist()
    model.engine.use_cuda_graph()
    started = time.perf_counter()
    first = model.generate(idx, new_tokens, temperature=0).tolist()  # records the graph at its first step
    set_up = time.perf_counter() - started
    second = model.generate(idx, new_tokens, temperature=0).tolist()
    assert first == eager and second == eager, f"eager {eager}\nCUDA graph {first}\nagain {second}"
    assert set_up < 10, f"the first CUDA-graph generation (recording included) took {set_up:.1f} s"
    step = model.engine.decode_step
    assert step.recorded is not None and step.cache is model.engine.cache  # one graph, on the cache it writes
