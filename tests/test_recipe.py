"""The faster recipe's parts: RMSNorm + QK-norm, ReLU^2, untied head, zero-init, Muon; and compile."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import overfit_losses

from model import GPT, GPTConfig
from trainer.config import TrainConfig
from trainer.muon import Muon
from trainer.optim import make_optimizers

FAST = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_encoding="rope", norm="rmsnorm",
            qk_norm=True, mlp="relu2", tie_weights=False, zero_init_proj=True, dropout=0.0, bias=True)
TC = TrainConfig(optimizer="muon", learning_rate=3e-3, weight_decay=0.0, beta1=0.9, beta2=0.95)


def test_fast_recipe_model_is_untied_zero_initialised_and_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAST)).eval()
    assert model.lm_head.weight is not model.wte.weight
    assert all(torch.all(b.attn.W_O.weight == 0) and torch.all(b.mlp.down.weight == 0) for b in model.blocks)
    assert isinstance(model.ln_f, torch.nn.RMSNorm) and model.blocks[0].attn.q_norm is not None
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 64
    with torch.no_grad():
        assert torch.equal(model(idx)[0][:, :9], model(changed)[0][:, :9])
    maps = model.attention_maps(idx)
    assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)))


def test_the_qk_norm_under_cpu_bf16_autocast_trains_without_a_torch_warning():
    # CPU autocast (the CPU preset's bf16) handed the norm bf16 queries and fp32 gains: torch warned, mid-run,
    # "Mismatch dtype between input and weight ... Cannot dispatch to fused implementation"
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAST))
    idx = torch.randint(0, 64, (2, 17))
    with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        model(idx[:, :-1], idx[:, 1:])[1].backward()
    assert not caught, [str(w.message) for w in caught]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(**FAST))
    muon, adamw = make_optimizers(model, TC, torch.device("cpu"))
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_params = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert muon_params.isdisjoint(adamw_params)
    assert muon_params | adamw_params == {id(p) for p in model.parameters()}
    assert id(model.blocks[0].attn.W_Q.weight) in muon_params and id(model.wte.weight) in adamw_params


def test_fast_recipe_learns_a_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAST))
    optimizers = make_optimizers(model, TC, torch.device("cpu"))
    losses = overfit_losses(model, torch.randint(0, 64, (4, 17)), 60, optimizers)
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.slow
def test_compiled_model_matches_eager_losses():
    torch.manual_seed(0)
    eager = GPT(GPTConfig(**{**FAST, "qk_norm": False}))
    compiled_model = GPT(GPTConfig(**{**FAST, "qk_norm": False}))
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    idx = torch.randint(0, 64, (4, 17))
    for model in (eager, compiled):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    assert abs(eager(idx[:, :-1], idx[:, 1:])[1].item() - compiled(idx[:, :-1], idx[:, 1:])[1].item()) < 1e-5
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        assert (a.grad - b.grad).abs().max().item() < 1e-5
