"""The logic of the GPU path, proved on a CPU in this process: each test fails on the defect it is
named after (MFU under DDP, bf16 on GPUs that only emulate it, flash below Ampere or with fp32
QK-norm queries, compile before DDP, no TF32, KV caches that CUDA graphs cannot capture, CUDA
random states of the wrong GPU, evaluation batches sized for the global batch, additive chunks
sized for a CPU cache, a process group never left, bf16 position tables, fp16 back-offs that
stopped runs). tests/test_gpu_path_cli.py proves the rest through train.py and torchrun;
tests/gpu/ runs the same paths on a real GPU."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import ADAMW, composed, free_port

from common.device import resolve_device, resolve_dtype
from common.errors import ConfigError
from model import GPT, GPTConfig, additive, attention
from model.additive import chunk_rows
from model.attention import MultiHeadAttention, flash_kernel_exists
from train import train_step
from trainer import distributed, runtime
from trainer.guards import NonFiniteGuard
from trainer.mfu import mfu, peak_flops
from trainer.optim import make_optimizers


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides}))


def test_mfu_of_several_processes_is_measured_against_all_their_devices():
    # 8 GPUs of 1 PFLOP/s each, stepping the global batch at 4 PFLOP/s of model FLOPs: 50 %, not 400 %
    assert mfu(4e15, 1e15, world_size=8) == 0.5
    assert mfu(4e14, 1e15, world_size=1) == 0.4


@pytest.mark.parametrize("name,peak", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                       ("NVIDIA H100 PCIe", 756e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12),
                                       ("NVIDIA L4", 121e12), ("NVIDIA A10G", 125e12), ("NVIDIA A100-SXM4-80GB", 312e12)])
def test_a_gpus_peak_is_its_own_not_that_of_a_name_inside_its_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == (peak, f"{name} table")


def test_dtype_auto_picks_fp16_on_gpus_that_only_emulate_bf16(monkeypatch):
    # a V100 or T4: torch counts bf16 as supported unless emulation is excluded
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.float16
    with pytest.raises(ConfigError, match=r"dtype=bfloat16 but this GPU \(Tesla T4\) has no native bf16"):
        resolve_dtype("bfloat16", cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert resolve_dtype("auto", cuda) == torch.bfloat16


def test_flash_is_claimed_only_where_pytorch_has_a_flash_kernel():
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    assert flash_kernel_exists(cuda, bf16, 64, True, capability=(8, 0))  # A100
    assert flash_kernel_exists(cuda, torch.float16, 128, True, capability=(9, 0))  # H100
    assert not flash_kernel_exists(cuda, torch.float16, 64, True, capability=(7, 0))  # V100
    assert not flash_kernel_exists(cuda, torch.float16, 64, True, capability=(7, 5))  # T4
    assert not flash_kernel_exists(cuda, torch.float32, 64, True, capability=(9, 0))
    assert not flash_kernel_exists(cuda, bf16, 64, False, capability=(9, 0))  # the KV-cache mask
    assert not flash_kernel_exists(cuda, bf16, 12, True, capability=(9, 0))
    assert not flash_kernel_exists(cuda, bf16, 512, True, capability=(9, 0))
    assert not flash_kernel_exists(torch.device("cpu"), bf16, 64, True)


class Float32Norm(torch.nn.RMSNorm):
    """RMSNorm as CUDA autocast runs it: in fp32, whatever the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


@pytest.mark.parametrize("rope", [False, True])
def test_qk_norm_under_autocast_hands_the_fused_kernel_queries_in_the_autocast_dtype(monkeypatch, rope):
    seen = []
    monkeypatch.setitem(attention.FUSED, "flash", lambda query, key, value, *args: seen.append(
        (query.dtype, key.dtype, value.dtype)) or value)
    module = MultiHeadAttention(GPTConfig(n_embd=32, n_head=2, attn_impl="flash", qk_norm=True,
                                          pos_encoding="rope" if rope else "learned"))
    module.q_norm, module.k_norm = Float32Norm(16), Float32Norm(16)
    with torch.autocast("cpu", torch.bfloat16):
        module(torch.randn(1, 5, 32))
    assert seen == [(torch.bfloat16, torch.bfloat16, torch.bfloat16)]


def test_compile_wraps_ddp_so_the_all_reduce_can_overlap_the_backward_pass(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_gpt()
        ranks = distributed.Ranks(rank=0, local_rank=0, world_size=2)  # what DDP is chosen for
        step_model, ddp = distributed.wrap_model(model, True, ranks, torch.device("cpu"))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.module is model
        assert isinstance(step_model, torch._dynamo.eval_frame.OptimizedModule) and step_model._orig_mod is ddp
        eager, ddp = distributed.wrap_model(model, False, ranks, torch.device("cpu"))
        assert eager is ddp
        alone, no_ddp = distributed.wrap_model(model, False, distributed.Ranks(), torch.device("cpu"))
        assert alone is model and no_ddp is None
    finally:
        dist.destroy_process_group()


def test_cuda_device_lets_fp32_matmuls_use_tf32_and_a_cpu_does_not(monkeypatch):
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        resolve_device("cpu")
        assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")  # CPU matmuls stay exact fp32
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_device("cuda") == torch.device("cuda")
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_kv_cache_is_allocated_once_at_static_addresses_and_reused():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(0))
    first = model.generate(prompt, 20, temperature=0)  # past block_size: the refill reuses the buffers too
    cache = model.engine.cache
    addresses = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.key_positions.data_ptr())
    second = model.generate(prompt, 20, temperature=0)
    assert model.engine.cache is cache
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.key_positions.data_ptr()) == addresses
    for buffer in (cache.keys, cache.values, cache.key_positions):  # a CUDA graph may write into them
        assert getattr(buffer, "_dynamo_static_input_type", None) is not None
    assert torch.equal(first, second)
    assert torch.equal(first, model.generate(prompt, 20, temperature=0, use_kv_cache=False))
    model.generate(prompt[:1], 2, temperature=0)  # another batch size: another cache
    assert model.engine.cache is not cache and model.engine.cache.keys.size(1) == 1
    with torch.autocast("cpu", torch.bfloat16):
        assert model.engine.kv_cache(1, torch.device("cpu")).keys.dtype == torch.bfloat16


def test_each_rank_saves_and_restores_only_its_own_gpus_random_state(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device, state.item())))
    gpu1 = torch.device("cuda", 1)
    state = runtime.rng_state(gpu1)
    runtime.set_rng_state(state, gpu1)
    assert calls == [("get", gpu1), ("set", gpu1, 7)]
    calls.clear()
    runtime.set_rng_state(state, torch.device("cpu"))  # resumed on a CPU: no GPU to restore
    assert calls == [] and "cuda" not in runtime.rng_state(torch.device("cpu"))


def test_evaluation_batches_are_one_processs_micro_batch(tiny_run, monkeypatch):
    import train

    sizes = []
    real_forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, idx, targets=None: sizes.append(
        (self.training, idx.size(0))) or real_forward(self, idx, targets))
    overrides = [*tiny_run["args"], f"out_dir={tiny_run['tmp'] / 'out'}", "train.batch_size=8", "train.grad_accum=4",
                 "train.max_iters=2", "train.eval_interval=1"]
    cfg = composed("train", *overrides)
    from common.settings import typed
    from trainer.config import RunConfig
    from trainer.guards import LastSave

    train.train(typed(RunConfig, cfg), distributed.Ranks(), "cpu", LastSave(tiny_run["tmp"] / "out"))
    assert {size for training, size in sizes if training} == {2}  # 8 sequences in 4 micro-batches
    assert {size for training, size in sizes if not training} == {2}  # evaluation: the same 2, not 8


def test_additive_chunks_on_a_gpu_hold_many_queries_and_on_a_cpu_fit_its_cache():
    gpu_default = torch.empty(64, 6, 256, 64)  # B, nh, T, attn_dim of the GPU default, fp32 pairs
    assert chunk_rows(gpu_default, 256, additive.additive_chunk_bytes(torch.device("cuda"))) >= 16
    assert additive.additive_chunk_bytes(torch.device("cpu")) == 8 * 2**20
    cpu_preset = torch.empty(16, 4, 128, 64)
    assert chunk_rows(cpu_preset, 128, additive.additive_chunk_bytes(torch.device("cpu"))) == 4


def test_a_single_torchrun_process_leaves_its_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ranks, device_name = distributed.setup("cpu")
    assert dist.is_initialized() and ranks.world_size == 1
    distributed.teardown(ranks)
    assert not dist.is_initialized()


@pytest.mark.parametrize("pos_encoding", ["rope", "sinusoidal"])
def test_bf16_sampling_keeps_position_tables_in_fp32(pos_encoding):
    model = tiny_gpt(pos_encoding=pos_encoding).eval()
    idx = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(0))
    reference = model(idx)[0]
    model.to_inference_dtype(torch.bfloat16)  # what sample.py dtype=bfloat16 does
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(b.dtype == torch.float32 for b in model.buffers())
    logits = model(idx)[0]
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.05
    assert model.lm_head.weight is model.wte.weight  # still tied
    assert model.generate(idx[:, :4], 3, temperature=0).shape == (1, 7)


def fp16_like_setup(init_scale: float):
    """A tiny GPT, fused AdamW and an enabled loss scaler on the CPU (fp32 math): what fp16 training
    runs, with overflows made by an outsized scale instead of fp16's small range."""
    model = tiny_gpt()
    optimizers = make_optimizers(model, ADAMW, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    return model, optimizers, scaler


def test_fp16_overflows_that_the_scaler_backs_off_from_are_skipped_but_not_counted():
    model, optimizers, scaler = fp16_like_setup(init_scale=2.0**127)  # the scaled loss is inf
    guard = NonFiniteGuard(max_in_row=2, verbose=False)
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    guard.check(1, *train_step(model, model, optimizers, scaler, x, x, ADAMW, torch.float32)[1:])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    for step in range(2, 5):
        guard.check(step, *train_step(model, model, optimizers, scaler, x, x, ADAMW, torch.float32)[1:])
    guard.read()
    assert scaler.get_scale() < 2.0**127  # the scaler backed off
    assert guard.failure() is None and guard.skipped == 0


def test_fp16_non_finite_losses_are_counted_and_stop_the_run():
    model, optimizers, scaler = fp16_like_setup(init_scale=2.0**16)
    with torch.no_grad():
        model.wte.weight[0] = float("nan")  # every window below holds token 0: the loss is NaN
    guard = NonFiniteGuard(max_in_row=2, verbose=False)
    x = torch.zeros(4, 16, dtype=torch.long)
    for step in (1, 2):
        guard.check(step, *train_step(model, model, optimizers, scaler, x, x, ADAMW, torch.float32)[1:])
    guard.read()
    assert guard.skipped == 2 and "steps 1 to 2" in str(guard.failure())
