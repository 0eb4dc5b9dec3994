"""train.py's training step on a GPU never makes the host wait for the device: the host batch is
copied from pinned memory, and the loss, the gradient norm and the non-finite flag stay on the
device until the loop reads them at log time. A sync would stall the launch queue every step."""
from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from train import loss_scaler, train_step
from trainer.config import TrainConfig
from trainer.optim import make_optimizers

from .conftest import GPU_DEVICE, ON_CPU, not_on_cpu

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_training_step_never_waits_for_the_gpu(optimizer: str):
    device = torch.device(GPU_DEVICE)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=128, dropout=0.0)).to(device)
    tc = TrainConfig(optimizer=optimizer, grad_accum=2, grad_clip=1.0)
    optimizers = make_optimizers(model, tc, device)
    scaler = loss_scaler(device, torch.bfloat16)
    x, y = torch.randint(0, 256, (2, 8, 32))  # on the host, as train.py's sampler hands them over
    train_step(model, model, optimizers, scaler, x, y, tc, torch.bfloat16)  # the optimizers' state is created
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync in the step raises
    try:
        losses = [train_step(model, model, optimizers, scaler, x, y, tc, torch.bfloat16)[0] for _ in range(3)]
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert losses[-1].item() < losses[0].item()  # read here, after the steps: the same batch, learnt
    if ON_CPU:
        pytest.skip(not_on_cpu("the sync check needs CUDA"))
