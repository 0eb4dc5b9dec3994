"""The attention core: explicit attention against an independent NumPy reference, the fused
backends against explicit attention, positional encodings, attention maps and the KV cache."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import model.attention as attention
from model import GPT, GPTConfig
from model.attention import MultiHeadAttention, Rotary, explicit_attention, flash_attention, sdpa_attention
from model.config import ATTN_IMPLS, ATTN_SCORES
from model.gpt import sinusoidal_table

BACKENDS = {"explicit": lambda q, k, v, causal: explicit_attention(q, k, v, causal)[0],
            "sdpa": sdpa_attention, "flash": flash_attention}
POS_ENCODINGS = ("learned", "sinusoidal", "rope")


# --- an independent reference: NumPy, float64, no torch in the math ----------------------------

def numpy_dot_scores(q, k):
    """q: (B, nh, T, hs), k: (B, nh, S, hs) -> (B, nh, T, S)"""
    return np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(q.shape[-1])


def numpy_multi_head_attention(x, source, W, b, n_head, causal, score=numpy_dot_scores):
    """x: (B, T, C) queries' input, source: (B, S, C) keys' and values' input; W, b: dicts of the
    four projections as (C_out, C_in) matrices and (C_out,) biases (torch's Linear layout);
    score(q, k) -> (B, nh, T, S) the scores before the mask."""
    B, T, C = x.shape
    S = source.shape[1]
    hs = C // n_head

    def heads(a, length):  # (B, L, C) -> (B, nh, L, hs)
        return a.reshape(B, length, n_head, hs).transpose(0, 2, 1, 3)

    q = heads(x @ W["Q"].T + b["Q"], T)
    k = heads(source @ W["K"].T + b["K"], S)
    v = heads(source @ W["V"].T + b["V"], S)
    scores = score(q, k)
    if causal:
        for i in range(T):
            for j in range(S):
                if j > i + (S - T):
                    scores[:, :, i, j] = -np.inf
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    context = np.einsum("bhts,bhsd->bhtd", weights, v)
    merged = context.transpose(0, 2, 1, 3).reshape(B, T, C)
    return merged @ W["O"].T + b["O"], weights


def projections(module: MultiHeadAttention):
    W = {n: getattr(module, f"W_{n}").weight.detach().numpy() for n in "QKVO"}
    b = {n: getattr(module, f"W_{n}").bias.detach().numpy() for n in "QKVO"}
    return W, b


@pytest.mark.parametrize("B,T,C,n_head", [(2, 7, 24, 3), (1, 1, 16, 4), (3, 12, 40, 5)])
def test_self_attention_matches_numpy_reference(B, T, C, n_head):
    torch.manual_seed(B * 100 + T)
    module = MultiHeadAttention(GPTConfig(n_embd=C, n_head=n_head, dropout=0.0, bias=True)).double()
    x = torch.randn(B, T, C, dtype=torch.float64)
    out, weights = module(x, return_weights=True)
    ref_out, ref_weights = numpy_multi_head_attention(x.numpy(), x.numpy(), *projections(module), n_head, causal=True)
    assert np.abs(out.detach().numpy() - ref_out).max() < 1e-12
    assert np.abs(weights.detach().numpy() - ref_weights).max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_matches_numpy_reference(causal):
    torch.manual_seed(1)
    module = MultiHeadAttention(GPTConfig(n_embd=24, n_head=4, dropout=0.0, bias=True)).double()
    x, source = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 9, 24, dtype=torch.float64)
    out, weights = module(x, context=source, causal=causal, return_weights=True)
    ref_out, ref_weights = numpy_multi_head_attention(x.numpy(), source.numpy(), *projections(module), 4, causal)
    assert weights.shape == (2, 4, 5, 9)
    assert np.abs(out.detach().numpy() - ref_out).max() < 1e-12
    assert np.abs(weights.detach().numpy() - ref_weights).max() < 1e-12
    if not causal:  # cross-attention sees the whole source by default
        assert (weights > 0).all()


def test_explicit_weights_are_causal_rows_summing_to_one():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(3))
    context, weights = explicit_attention(query, key, value)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert torch.all(weights.triu(1) == 0)
    assert torch.allclose(context[:, :, 0], value[:, :, 0])  # row 0 sees only key 0


# --- fused backends agree with the explicit path -----------------------------------------------

SHAPES = [(1, 1, 1, 8), (2, 3, 7, 24), (2, 4, 33, 12), (1, 2, 64, 64), (3, 2, 5, 20)]  # (B, nh, T, hs)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T_past", [0, 4])  # 4: queries continue 4 cached keys (T_q < T_k)
@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_backend_outputs_and_gradients_equal_explicit(backend, T_past, shape, dtype, tolerance):
    B, nh, T, hs = shape
    generator = torch.Generator().manual_seed(sum(shape) + T_past)
    query = torch.randn(B, nh, T, hs, dtype=dtype, generator=generator)
    key, value = (torch.randn(B, nh, T_past + T, hs, dtype=dtype, generator=generator) for _ in range(2))
    results = {}
    for name in ("explicit", backend):
        q, k, v = (t.clone().requires_grad_() for t in (query, key, value))
        out = BACKENDS[name](q, k, v, True)
        out.backward(torch.ones_like(out))
        results[name] = (out.detach(), q.grad, k.grad, v.grad)
    for ours, theirs in zip(results["explicit"], results[backend]):
        assert (ours - theirs).abs().max().item() <= tolerance


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_backends_agree_on_a_whole_gpts_logits(backend, pos_encoding):
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=24, n_layer=2, n_head=3, n_embd=36, pos_encoding=pos_encoding)
    explicit = GPT(GPTConfig(**config)).double().eval()
    fused = GPT(GPTConfig(**config, attn_impl=backend)).double().eval()
    fused.load_state_dict(explicit.state_dict())
    idx = torch.randint(0, 50, (2, 24))
    assert (explicit(idx)[0] - fused(idx)[0]).abs().max().item() < 1e-10


def test_flash_says_which_kernel_runs_when_there_is_no_flash_kernel(monkeypatch):
    monkeypatch.setattr(attention, "_flash_notice_given", False)
    q = torch.randn(1, 1, 3, 8)
    with pytest.warns(UserWarning, match="no FlashAttention kernel for device=cpu dtype=float32.*not flash"):
        flash_attention(q, q, q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flash_attention(q, q, q)  # said once, not at every call


# --- positional encodings ----------------------------------------------------------------------

def test_sinusoidal_table_follows_vaswani():
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert torch.isclose(table[pos, 2 * i], torch.tensor(np.sin(pos / 10000 ** (2 * i / 16)), dtype=torch.float32))
    assert torch.isclose(table[pos, 2 * i + 1], torch.tensor(np.cos(pos / 10000 ** (2 * i / 16)), dtype=torch.float32))
    assert sinusoidal_table(5, 7).shape == (5, 7)  # odd widths work too


def test_rope_scores_depend_only_on_relative_position():
    rotary = Rotary(head_dim=8, n_positions=64).double()
    torch.manual_seed(0)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def rotated(vector, position):
        return rotary(vector.view(1, 1, 1, 8), torch.tensor([position])).flatten()

    assert torch.isclose(rotated(q, 0).norm(), q.norm())  # a rotation keeps lengths
    assert torch.isclose(rotated(q, 10) @ rotated(k, 3), rotated(q, 40) @ rotated(k, 33))
    assert not torch.isclose(rotated(q, 10) @ rotated(k, 3), rotated(q, 10) @ rotated(k, 4))


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="rope needs an even head_dim"):
        GPTConfig(vocab_size=10, n_embd=15, n_head=3, pos_encoding="rope")


# --- causality, attention maps, the KV cache ---------------------------------------------------

def tiny_gpt(attn_impl: str, pos_encoding: str, seed: int = 0, block_size: int = 12, attn_score: str = "dot") -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=40, block_size=block_size, n_layer=2, n_head=2, n_embd=24,
                       attn_impl=attn_impl, pos_encoding=pos_encoding, attn_score=attn_score)
    return GPT(config).eval()


# every backend with dot-product scores, and additive scores (explicit only)
SCORINGS = [(attn_impl, "dot") for attn_impl in ATTN_IMPLS] + [("explicit", "additive")]


@pytest.mark.parametrize("attn_impl,attn_score", SCORINGS)
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_future_tokens_never_change_past_logits(attn_impl, attn_score, pos_encoding):
    model = tiny_gpt(attn_impl, pos_encoding, attn_score=attn_score)
    idx = torch.randint(0, 40, (2, 12))
    for t in (0, 6, 11):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 40
        with torch.no_grad():
            a, b = model(idx)[0], model(changed)[0]
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])


@pytest.mark.parametrize("attn_score", ATTN_SCORES)
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_attention_maps_are_the_weights_of_the_forward_pass(attn_score, pos_encoding, monkeypatch):
    model = tiny_gpt("explicit", pos_encoding, attn_score=attn_score)
    idx = torch.randint(0, 40, (3, 10))
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 3, 2, 10, 10) and not maps.requires_grad
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3, 2, 10))
    assert torch.all(maps.triu(1) == 0)

    used = []
    original = attention.explicit_attention

    def recording(*args, **kwargs):
        context, weights = original(*args, **kwargs)
        used.append(weights.detach())
        return context, weights

    monkeypatch.setattr(attention, "explicit_attention", recording)
    with torch.no_grad():
        model(idx)
    assert torch.equal(torch.stack(used), maps)

    if attn_score == "dot":
        fused = tiny_gpt("sdpa", pos_encoding)  # same seed, same weights, other kernel
        assert torch.equal(fused.attention_maps(idx), maps)


@pytest.mark.parametrize("attn_impl,attn_score", SCORINGS)
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("prompt_length,new_tokens", [(1, 8), (5, 20), (12, 6)])  # 20 and 6 run past block_size
def test_greedy_generation_is_identical_with_and_without_kv_cache(attn_impl, attn_score, pos_encoding, prompt_length,
                                                                   new_tokens):
    model = tiny_gpt(attn_impl, pos_encoding, seed=prompt_length, attn_score=attn_score)
    prompt = torch.randint(0, 40, (2, prompt_length), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prompt, new_tokens, temperature=0, use_kv_cache=True)
    uncached = model.generate(prompt, new_tokens, temperature=0, use_kv_cache=False)
    assert cached.shape == (2, prompt_length + new_tokens)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("attn_score", ATTN_SCORES)
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_cached_logits_equal_full_recomputation(attn_score, pos_encoding):
    model = tiny_gpt("explicit", pos_encoding, attn_score=attn_score).double()
    idx = torch.randint(0, 40, (2, 9))
    full, _ = model.hidden_states(idx)
    cache = model.engine.kv_cache(2, torch.device("cpu"))  # float64, the model's dtype
    first, _ = model.hidden_states(idx[:, :5], cache, positions=torch.arange(5))
    rest = [model.hidden_states(idx[:, t:t + 1], cache, positions=torch.tensor([t]))[0] for t in range(5, 9)]
    assert (torch.cat([first, *rest], dim=1) - full).abs().max().item() < 1e-12
