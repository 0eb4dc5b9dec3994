"""Muon on a GPU: the fast recipe's optimizers orthogonalise in bf16 on GPUs that have it, learn,
and take or skip a step without the host waiting for the device."""
from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from trainer.config import TrainConfig
from trainer.muon import Muon
from trainer.guards import step_unless
from trainer.optim import make_optimizers
from common.device import cuda_supports_bf16

from .conftest import GPU_DEVICE, ON_CPU, not_on_cpu

pytestmark = pytest.mark.gpu

FAST = dict(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=128, pos_encoding="rope", norm="rmsnorm",
            qk_norm=True, mlp="relu2", tie_weights=False, zero_init_proj=True)
TC = TrainConfig(optimizer="muon", learning_rate=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95)


def test_muon_learns_on_the_gpu_and_steps_or_skips_without_a_host_sync():
    device = torch.device(GPU_DEVICE)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAST)).to(device)
    optimizers = make_optimizers(model, TC, device)
    muon = optimizers[0]
    assert isinstance(muon, Muon)
    if device.type == "cuda":
        assert muon.ns_dtype == (torch.bfloat16 if cuda_supports_bf16() else torch.float32)
    idx = torch.randint(0, 256, (8, 33), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    losses = []
    for step in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        if step == 10:  # one poisoned step: it must change nothing
            for p in model.parameters():
                p.grad.fill_(float("nan"))
            before = [p.detach().clone() for p in model.parameters()]
        nonfinite = ~torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any host sync inside the optimizers raises
        try:
            step_unless(nonfinite, optimizers, scaler)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        if step == 10:
            assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    if ON_CPU:
        pytest.skip(not_on_cpu("the sync check and the bf16 orthogonalisation need CUDA"))
