"""Additive (Bahdanau) scores: against an independent NumPy reference and the plain formula through
autograd, chunked against unchunked, and inside the GPT: causality, the KV cache, attention maps,
the config errors and the optimizer groups."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import composed, overfit_losses
from omegaconf import OmegaConf
from test_attention import numpy_multi_head_attention, projections, tiny_gpt

from model import GPT, GPTConfig
from model.additive import additive_scores
from model.attention import MultiHeadAttention, explicit_attention, future_mask, last_positions
from trainer.config import TrainConfig
from trainer.optim import make_optimizers

ONE_QUERY_PER_CHUNK = 1  # chunk_bytes below one query's pairs: every chunk holds a single query


def numpy_additive_scores(W_q, W_k, v):
    """score(q, k) = v . tanh(W_q q + W_k k) per head, for numpy_multi_head_attention.
    W_q, W_k: (nh, hs, d); v: (nh, d)."""
    def score(q, k):  # (B, nh, T, hs), (B, nh, S, hs) -> (B, nh, T, S)
        query_proj = np.einsum("bhtc,hcd->bhtd", q, W_q)
        key_proj = np.einsum("bhsc,hcd->bhsd", k, W_k)
        return np.einsum("hd,bhtsd->bhts", v, np.tanh(query_proj[:, :, :, None, :] + key_proj[:, :, None, :, :]))
    return score


def additive_parameters(module: MultiHeadAttention):
    return [p.detach().numpy() for p in (module.score.W_q, module.score.W_k, module.score.v)]


@pytest.mark.parametrize("chunk_bytes", [ONE_QUERY_PER_CHUNK, None])
@pytest.mark.parametrize("B,T,C,n_head,attn_dim", [(2, 7, 24, 3, None), (1, 1, 16, 4, 3), (3, 12, 40, 5, 11)])
def test_additive_self_attention_matches_numpy_reference(B, T, C, n_head, attn_dim, chunk_bytes):
    torch.manual_seed(B * 100 + T)
    module = MultiHeadAttention(GPTConfig(n_embd=C, n_head=n_head, attn_score="additive", attn_dim=attn_dim, dropout=0.0, bias=True)).double()
    module.score.chunk_bytes = chunk_bytes
    assert module.score.W_q.shape == (n_head, C // n_head, attn_dim or C // n_head)
    x = torch.randn(B, T, C, dtype=torch.float64)
    out, weights = module(x, return_weights=True)
    ref_out, ref_weights = numpy_multi_head_attention(x.numpy(), x.numpy(), *projections(module), n_head, causal=True,
                                                      score=numpy_additive_scores(*additive_parameters(module)))
    assert np.abs(out.detach().numpy() - ref_out).max() < 1e-10
    assert np.abs(weights.detach().numpy() - ref_weights).max() < 1e-10


@pytest.mark.parametrize("causal", [False, True])  # causal with 5 queries on 9 keys: the mask's offset
def test_additive_cross_attention_matches_numpy_reference(causal):
    torch.manual_seed(1)
    module = MultiHeadAttention(GPTConfig(n_embd=24, n_head=4, attn_score="additive", dropout=0.0, bias=True)).double()
    module.score.chunk_bytes = ONE_QUERY_PER_CHUNK
    x, source = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 9, 24, dtype=torch.float64)
    out, weights = module(x, context=source, causal=causal, return_weights=True)
    ref_out, ref_weights = numpy_multi_head_attention(x.numpy(), source.numpy(), *projections(module), 4, causal,
                                                      score=numpy_additive_scores(*additive_parameters(module)))
    assert np.abs(out.detach().numpy() - ref_out).max() < 1e-10
    assert np.abs(weights.detach().numpy() - ref_weights).max() < 1e-10


# --- chunks and the written-out backward pass against the plain formula through autograd ------

def autograd_additive_scores(query, key, W_q, W_k, v, causal):
    """All pairs at once with torch.tanh, differentiated by autograd (causal is left to the mask)."""
    pairs = (query @ W_q)[:, :, :, None, :] + (key @ W_k)[:, :, None, :, :]  # (B, nh, T_q, T_k, d)
    return (torch.tanh(pairs) @ v[:, None, :, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_bytes", [ONE_QUERY_PER_CHUNK, 3 * 2 * 3 * 11 * 5 * 8, 2**40])  # 1, 3-4, all queries
@pytest.mark.parametrize("causal,T_past", [(True, 0), (True, 4), (False, 0)])  # T_past: queries after cached keys
def test_chunked_outputs_and_gradients_equal_the_plain_formula(chunk_bytes, causal, T_past):
    generator = torch.Generator().manual_seed(chunk_bytes % 1000 + T_past)
    B, nh, T, hs, d = 2, 3, 7, 6, 5
    inputs = [torch.randn(B, nh, T, hs, dtype=torch.float64, generator=generator)]  # query
    inputs += [torch.randn(B, nh, T_past + T, hs, dtype=torch.float64, generator=generator) for _ in range(2)]  # key, value
    inputs += [torch.randn(nh, hs, d, dtype=torch.float64, generator=generator) / hs**0.5 for _ in range(2)]  # W_q, W_k
    inputs += [torch.randn(nh, d, dtype=torch.float64, generator=generator)]  # v
    grad_context = torch.randn(B, nh, T, hs, dtype=torch.float64, generator=generator)
    results = []
    for scores in (functools.partial(additive_scores, chunk_bytes=chunk_bytes), autograd_additive_scores):
        query, key, value, W_q, W_k, v = (t.clone().requires_grad_() for t in inputs)
        score = functools.partial(scores, W_q=W_q, W_k=W_k, v=v)
        context, weights = explicit_attention(query, key, value, causal, score=score)
        context.backward(grad_context)
        results.append([context, weights] + [t.grad for t in (query, key, value, W_q, W_k, v)])
    for ours, plain in zip(*results):
        assert (ours - plain).abs().max().item() < 1e-12


def test_causal_chunks_skip_the_masked_pairs():
    torch.manual_seed(0)
    query, key = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 8, 4)
    W = torch.randn(2, 4, 3)
    scores = additive_scores(query, key, W, W, torch.randn(2, 3), causal=True, chunk_bytes=ONE_QUERY_PER_CHUNK)
    hidden = future_mask(*last_positions(6, 8, query.device))
    assert torch.all(scores[:, :, hidden] == float("-inf")) and torch.isfinite(scores[:, :, ~hidden]).all()


def test_additive_attention_runs_under_bf16_autocast_with_float32_pairs():
    torch.manual_seed(0)
    module = MultiHeadAttention(GPTConfig(n_embd=32, n_head=2, attn_score="additive", dropout=0.0))
    x = torch.randn(2, 9, 32)
    reference, _ = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(x)
    out.float().sum().backward()
    assert (out.float() - reference).abs().max().item() < 0.05 * reference.abs().max().item()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in module.score.parameters())


# --- inside the GPT ----------------------------------------------------------------------------

# causality, KV-cache equality and attention maps of additive scores are tested in
# test_attention.py with every scoring

def test_additive_maps_differ_from_dot_product_maps_of_the_same_weights():
    model = tiny_gpt("explicit", "learned", attn_score="additive")
    dot = tiny_gpt("explicit", "learned")
    dot.load_state_dict(model.state_dict(), strict=False)  # the same weights, without W_q, W_k, v
    idx = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(dot.attention_maps(idx), model.attention_maps(idx))


# --- configuration and optimizers --------------------------------------------------------------

@pytest.mark.parametrize("attn_impl", ["sdpa", "flash"])
def test_additive_with_a_fused_backend_is_a_config_error(attn_impl):
    with pytest.raises(ValueError, match=f"model.attn_score=additive cannot run with model.attn_impl={attn_impl}: "
                                         ".*use model.attn_impl=explicit"):
        GPTConfig(vocab_size=40, attn_score="additive", attn_impl=attn_impl)
    with pytest.raises(ValueError, match=f"model.attn_score=additive cannot run with model.attn_impl={attn_impl}"):
        MultiHeadAttention(GPTConfig(n_embd=24, n_head=2, attn_impl=attn_impl, attn_score="additive"))


@pytest.mark.parametrize("field,value,message", [
    ("attn_score", "bahdanau", "model.attn_score='bahdanau' must be one of dot, additive"),
    ("attn_dim", 0, "model.attn_dim=0 must be a positive integer or null"),
    ("attn_dim", 2.5, "model.attn_dim=2.5 must be a positive integer or null"),
])
def test_bad_additive_config_is_rejected_with_the_key_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(vocab_size=40, **{field: value})


def test_the_train_config_has_the_score_keys():
    model_cfg = composed("train").model
    assert model_cfg.attn_score == "dot" and model_cfg.attn_dim is None
    config = GPTConfig(vocab_size=40, **{**OmegaConf.to_container(model_cfg), "attn_score": "additive", "attn_dim": 8})
    assert GPT(config).blocks[0].attn.score.v.shape == (6, 8)


def test_muon_leaves_the_additive_parameters_to_adamw_and_the_model_learns():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_encoding="rope",
                          norm="rmsnorm", qk_norm=True, tie_weights=False, attn_score="additive", dropout=0.0, bias=True))
    tc = TrainConfig(optimizer="muon", learning_rate=3e-3, weight_decay=0.0, beta1=0.9, beta2=0.95)
    muon, adamw = make_optimizers(model, tc, torch.device("cpu"))
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_params = {id(p) for g in adamw.param_groups for p in g["params"]}
    additive = {id(p) for block in model.blocks for p in block.attn.score.parameters()}
    assert additive <= adamw_params and muon_params.isdisjoint(additive | adamw_params)
    assert muon_params | adamw_params == {id(p) for p in model.parameters()}
    losses = overfit_losses(model, torch.randint(0, 64, (4, 17)), 40, [muon, adamw])
    assert losses[-1] < 0.3 * losses[0]
