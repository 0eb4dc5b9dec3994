"""The GPT: public API, causality, that it learns, and the sampling filters."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import overfit_losses

from model import GPT, GPTConfig
from model.generation import filter_top_k, filter_top_p, sample_next_token

SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)


def test_forward_returns_logits_for_every_position_and_loss_only_with_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL))
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    _, loss = model(idx, idx)
    assert loss.ndim == 0 and abs(loss.item() - math.log(64)) < 0.5  # near-uniform at init
    assert model.lm_head.weight is model.wte.weight  # tied head


@pytest.mark.parametrize("attn_impl", ["explicit", "sdpa", "flash"])
def test_changing_future_tokens_never_changes_past_logits(attn_impl):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, attn_impl=attn_impl)).eval()
    idx = torch.randint(0, 64, (2, 16))
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 64, changed[:, t + 1:].shape)
        with torch.no_grad():
            a, _ = model(idx)
            b, _ = model(changed)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])
        if t < 15:
            assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL))
    losses = overfit_losses(model, torch.randint(0, 64, (4, 16)), 60)
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("field,value,message", [
    ("n_embd", 30, "n_embd=30 is not divisible by model.n_head=4"),
    ("n_layer", 0, "n_layer=0 must be a positive integer"),
    ("attn_impl", "fast", "attn_impl='fast' must be one of explicit, tiled, sdpa, flash"),
    ("dropout", 1.5, r"dropout=1.5 must be a number in \[0, 1\)"),
])
def test_bad_config_is_rejected_with_the_key_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, field: value})


def test_generate_greedy_is_deterministic_and_runs_past_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).eval()
    prompt = torch.randint(0, 64, (2, 3))
    out = model.generate(prompt, 20, temperature=0)
    assert out.shape == (2, 23) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, model.generate(prompt, 20, temperature=0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(model.generate(prompt, 10, generator=g1), model.generate(prompt, 10, generator=g2))


def test_top_k_keeps_the_k_largest_logits():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = filter_top_k(logits, 2)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[False, True, True, False]]))


def test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    kept = filter_top_p(probs.log(), 0.8)  # 0.5 + 0.3 reaches 0.8
    assert torch.equal(torch.isfinite(kept), torch.tensor([[True, False, True, False]]))
    assert torch.allclose(torch.softmax(kept, -1), torch.tensor([[0.625, 0.0, 0.375, 0.0]]))
    assert torch.isfinite(filter_top_p(probs.log(), 0.01)).sum() == 1  # the top token always stays


def test_sampling_rejects_bad_settings():
    logits = torch.zeros(1, 4)
    for kwargs, message in (({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")):
        with pytest.raises(ValueError, match=message):
            sample_next_token(logits, **{"temperature": 1.0, **kwargs})
