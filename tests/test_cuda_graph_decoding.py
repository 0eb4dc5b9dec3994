"""CUDA-graph decoding's bookkeeping, on the CPU: the Engine's CUDAGraphStep records the one-token step
once and replays it for every token, here on conftest.py's stand-in for a CUDA graph (the same kernels
replayed on the same memory). Whatever the step took from Python at recording time instead of from its
input buffers would replay stale: the tokens would differ from eager decoding's.
tests/gpu/test_gpu_trained_model.py replays the real thing."""
from __future__ import annotations

import pytest
import torch
from conftest import composed

import sample
from common.errors import ConfigError
from common.settings import typed
from model import GPT, GPTConfig
from model.generation import CUDAGraphStep
from sample import SampleConfig


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0) | overrides
    return GPT(GPTConfig(**config)).eval()


@pytest.mark.parametrize("overrides", [{}, {"attn_impl": "sdpa", "pos_encoding": "learned"},
                                       {"attn_impl": "tiled", "attn_tile": 8, "pos_encoding": "sinusoidal"},
                                       {"attn_score": "additive", "qk_norm": False}])
def test_replayed_decoding_gives_eager_greedy_tokens_past_the_context(fake_cuda_graphs, overrides):
    model = tiny_gpt(**overrides)
    prompt = torch.tensor([[5, 17, 3], [9, 9, 60]])
    eager = model.generate(prompt, 30, temperature=0)  # past block_size 24: the window refills the cache
    model.engine.use_cuda_graph()
    replayed = model.generate(prompt, 30, temperature=0)
    assert torch.equal(replayed, eager)
    # recorded once; replayed for each token while the sequence fits (lengths 3..23), then refills read its cache
    assert len(fake_cuda_graphs) == 1 and fake_cuda_graphs[0].replays == 21


def test_sampled_tokens_match_eager_with_the_same_seed(fake_cuda_graphs):
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])

    def sample() -> torch.Tensor:
        return model.generate(prompt, 20, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(7))

    eager = sample()
    model.engine.use_cuda_graph()
    assert torch.equal(sample(), eager)


def test_a_graph_is_recorded_once_per_cache_and_anew_for_another_batch_size(fake_cuda_graphs):
    model = tiny_gpt()
    model.engine.use_cuda_graph()
    one, two = torch.tensor([[4, 5]]), torch.tensor([[4, 5], [6, 7]])
    model.generate(one, 5, temperature=0)
    model.generate(one, 5, temperature=0)  # the same cache: the graph replays
    assert len(fake_cuda_graphs) == 1 and fake_cuda_graphs[0].replays == 8
    model.generate(two, 5, temperature=0)  # two sequences: a new cache, a new graph on its buffers
    assert len(fake_cuda_graphs) == 2 and fake_cuda_graphs[1].replays == 4
    assert torch.equal(model.generate(one, 5, temperature=0)[0], model.generate(two, 5, temperature=0)[0])


def test_a_step_that_cannot_be_recorded_says_so_once_and_decodes_eagerly(fake_cuda_graphs, capsys):
    def step_with_host_sync(next_id, kv_cache, positions):
        return torch.zeros(1, 3) + positions.item()  # the position read back to Python: no graph can hold it

    model = tiny_gpt()
    step = CUDAGraphStep(step_with_host_sync)
    cache = model.engine.kv_cache(1, torch.device("cpu"))
    stream = torch.cuda.current_stream()
    assert [step(torch.tensor([[1]]), cache, torch.tensor([p]))[0, 0].item() for p in (3, 4, 5)] == [3.0, 4.0, 5.0]
    assert torch.cuda.current_stream() is stream  # not the failed recording's
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: the decoding step could not be recorded as a "
                                                         "CUDA graph (aten._local_scalar_dense.default reads a value")
    assert warnings[0].endswith("it runs without one (cuda_graph=false skips the attempt)")


@pytest.mark.parametrize("overrides,device_type,records", [
    ((), "cuda", True), ((), "cpu", False), ((), "mps", False),
    (("compile=true",), "cuda", False),  # Inductor's code replays CUDA graphs of its own
    (("use_kv_cache=false",), "cuda", False),  # no one-token step to record
    (("cuda_graph=false",), "cuda", False), (("cuda_graph=true",), "cuda", True),
])
def test_cuda_graph_auto_records_on_cuda_with_the_kv_cache_and_without_compile(overrides, device_type, records):
    assert typed(SampleConfig, composed("sample", *overrides), "").records_cuda_graph(device_type) == records


def test_cuda_graph_true_without_a_gpu_is_one_line_before_any_checkpoint_is_read(tmp_path):
    settings = composed("sample", "cuda_graph=true", "device=cpu", f"out_dir={tmp_path / 'no-such-run'}")
    with pytest.raises(ConfigError) as caught:
        sample.main_sample(settings)
    assert str(caught.value) == "cuda_graph=true needs a CUDA device (this one is cpu): use cuda_graph=auto"
