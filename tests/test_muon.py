"""Our Muon: the same update as torch.optim.Muon, orthogonalised in the dtype the hardware runs
natively (fp32 on a CPU without AVX-512 BF16), fp16-scaled gradients and torch's checkpoints."""
from __future__ import annotations

import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import common.device
from trainer.muon import Muon, newton_schulz_dtype, orthogonalise


def matrices(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape) * 0.1) for shape in ((24, 8), (8, 24), (16, 16))]


def set_grads(params: list[torch.nn.Parameter], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalise_brings_every_singular_value_near_one(shape, dtype):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
    update = u @ torch.diag(torch.logspace(-1.5, 0, min(shape))) @ v.T  # singular values over 1.5 decades
    result = orthogonalise(update, steps=5, dtype=dtype)
    assert result.dtype == dtype and result.shape == shape
    singular = torch.linalg.svdvals(result.float())
    assert singular.min() > 0.5 and singular.max() < 1.3, singular
    core = u.T @ result.float() @ v  # diagonal when the singular vectors are the update's
    assert torch.allclose(core, torch.diag(core.diagonal()), atol=0.05)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_three_steps_match_torch_muon_with_the_same_precision(weight_decay):
    ours, theirs = matrices(), matrices()
    mine = Muon(ours, lr=0.02, weight_decay=weight_decay, ns_dtype=torch.bfloat16)  # torch's always uses bf16
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        set_grads(ours, step)
        set_grads(theirs, step)
        mine.step()
        reference.step()
    for a, b, start in zip(ours, theirs, matrices()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert not torch.allclose(a, start, rtol=0, atol=1e-3)  # they did move


def test_fp32_orthogonalisation_differs_from_bf16_by_bf16_rounding_only():
    fp32, bf16 = matrices(), matrices()
    for params, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        set_grads(params, 0)
        Muon(params, lr=0.02, ns_dtype=dtype).step()
    for a, b, start in zip(fp32, bf16, matrices()):
        step_a, step_b = (a.detach() - start).flatten(), (b.detach() - start).flatten()
        assert torch.cosine_similarity(step_a, step_b, dim=0) > 0.99  # the same step up to bf16's ~3 digits


class MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every matrix multiply that runs inside it."""

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("native_bf16", [False, True])
def test_on_a_cpu_without_native_bf16_every_muon_matmul_runs_in_fp32(monkeypatch, native_bf16):
    monkeypatch.setattr(common.device, "cpu_supports_bf16", lambda: native_bf16)
    dtype = newton_schulz_dtype(torch.device("cpu"))
    assert dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    params = matrices()
    set_grads(params, 0)
    optimizer = Muon(params, lr=0.02, ns_dtype=dtype)
    with MatmulDtypes() as recorded:
        optimizer.step()
    assert recorded.dtypes == {dtype}  # emulated bf16 ran ~100x slower than fp32 on AVX2


def test_the_training_setup_picks_the_orthogonalisation_dtype_of_its_device(monkeypatch):
    from model import GPT, GPTConfig
    from trainer.config import TrainConfig
    from trainer.optim import make_optimizers
    tc = TrainConfig(optimizer="muon", learning_rate=1e-3, weight_decay=0.0, beta1=0.9, beta2=0.95)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    for native in (False, True):
        monkeypatch.setattr(common.device, "cpu_supports_bf16", lambda: native)
        muon = make_optimizers(model, tc, torch.device("cpu"))[0]
        assert muon.ns_dtype == (torch.bfloat16 if native else torch.float32)


def test_scaled_gradients_with_grad_scale_take_the_same_step_as_unscaled_ones():
    plain, scaled = matrices(), matrices()
    set_grads(plain, 0)
    set_grads(scaled, 0)
    for p in scaled:
        p.grad *= 1024.0
    Muon(plain, lr=0.02, weight_decay=0.1).step()
    optimizer = Muon(scaled, lr=0.02, weight_decay=0.1)
    optimizer.grad_scale = torch.tensor(1024.0)  # what GradScaler sets for an fp16 run it did not unscale
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b)


def test_a_torch_muon_checkpoint_resumes_in_ours_with_its_momentum():
    theirs, ours, again = matrices(), matrices(), matrices()
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    set_grads(theirs, 0)
    reference.step()
    with torch.no_grad():
        for p, q, r in zip(ours, again, theirs):
            p.copy_(r)
            q.copy_(r)
    resumed = Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    saved = io.BytesIO()
    torch.save(reference.state_dict(), saved)  # as train.py saves it
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    fresh = Muon(again, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)  # no momentum: must differ
    for params in (theirs, ours, again):
        set_grads(params, 1)
    reference.step()
    resumed.step()
    fresh.step()
    for p, r, q in zip(ours, theirs, again):
        torch.testing.assert_close(p, r, rtol=0, atol=1e-6)
        assert not torch.allclose(q, r, rtol=0, atol=1e-4)


def test_muon_refuses_a_parameter_that_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"matrices only, got a parameter of shape \(8,\)"):
        Muon([torch.nn.Parameter(torch.zeros(8))], lr=0.01)
