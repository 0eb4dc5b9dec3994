"""Tiled attention (model.attn_impl=tiled, tiled_attention in model/attention.py) against the explicit path: outputs,
causal and not, with cached keys and cross-attention, under bf16 autocast and with dropout; its tile setting;
a whole GPT; and bench/attention.py's smallest run, in this process."""
from __future__ import annotations

import pytest
import torch
from conftest import overfit_losses

import model.attention as attention
from bench import attention as bench_attention
from common.errors import ConfigError
from common.settings import typed
from model import GPT, GPTConfig
from model.attention import explicit_attention, tiled_attention


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiled path on these tiny tensors is many small operations: a second thread only adds hand-offs,
    and on a shared 2-core machine, waits for the busy core (this file took 40 s with two threads, 4 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (T_q, T_k, causal, positions): self-attention, cached keys (the queries are the last T_q positions),
# a KV cache's slots with the unwritten ones after every query, cross-attention
CASES = {
    "self, causal": (37, 37, True, None),
    "self, not causal": (37, 37, False, None),
    "cached keys": (5, 29, True, None),
    "KV cache slots": (3, 40, True, (torch.arange(9, 12), torch.arange(40))),
    "cross-attention": (11, 26, False, None),
}


def inputs(T_q: int, T_k: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """query (2, 3, T_q, 16), key and value (2, 3, T_k, 16), leaves that collect gradients"""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, T_q, 16), (2, 3, T_k, 16), (2, 3, T_k, 16)]
    return [torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]


def context_and_gradients(attend, query, key, value) -> list[torch.Tensor]:
    context = attend(query, key, value)
    gradients = torch.autograd.grad((context.float() * torch.linspace(-1, 1, context.size(-1))).sum(),
                                    [query, key, value])
    return [context.float(), *(gradient.float() for gradient in gradients)]


@pytest.mark.parametrize("tile", [7, 16, 64])  # 7 and 16 divide no T here; 64 holds every T in one tile
@pytest.mark.parametrize("case", CASES)
def test_tiled_equals_explicit_forward_and_gradients(case, tile):
    T_q, T_k, causal, positions = CASES[case]
    query, key, value = inputs(T_q, T_k, torch.float32)
    explicit = context_and_gradients(lambda q, k, v: explicit_attention(q, k, v, causal, positions=positions)[0],
                                     query, key, value)
    ours = context_and_gradients(lambda q, k, v: tiled_attention(q, k, v, causal, positions=positions, tile=tile),
                                 query, key, value)
    for theirs, mine in zip(explicit, ours):
        assert (theirs - mine).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["self, causal", "cross-attention"])
def test_tiled_equals_explicit_under_bf16_autocast(case):
    T_q, T_k, causal, _ = CASES[case]
    query, key, value = inputs(T_q, T_k, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit = context_and_gradients(lambda q, k, v: explicit_attention(q, k, v, causal)[0], query, key, value)
        ours = context_and_gradients(lambda q, k, v: tiled_attention(q, k, v, causal, tile=8), query, key, value)
    for theirs, mine in zip(explicit, ours):
        assert (theirs - mine).abs().max().item() <= 2e-2 * max(1.0, theirs.abs().max().item())  # bf16: 8 bits


def test_key_tiles_in_a_query_tiles_future_are_not_computed(monkeypatch):
    shapes, scores = [], attention.dot_product_scores

    def recording(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:  # notes each tile of scores computed
        shapes.append((query.size(-2), key.size(-2)))
        return scores(query, key)

    monkeypatch.setattr(attention, "dot_product_scores", recording)
    query, key, value = inputs(40, 40, torch.float32)
    with torch.no_grad():
        tiled_attention(query, key, value, causal=True, tile=16)
        # query tiles 0-15, 16-31, 32-39 meet 1, 2 and 3 key tiles: the 3 above the diagonal are skipped
        assert shapes == [(16, 16), (16, 16), (16, 16), (8, 16), (8, 16), (8, 8)]
        shapes.clear()
        tiled_attention(query, key, value, causal=False, tile=16)
        assert len(shapes) == 9


def test_dropout_in_one_tile_draws_explicits_mask():
    """With one tile, the dropout mask has the weights' shape and is drawn from the same random state."""
    query, key, value = inputs(12, 12, torch.float64)
    results = []
    for attend in (lambda q, k, v: explicit_attention(q, k, v, True, 0.3)[0],
                   lambda q, k, v: tiled_attention(q, k, v, True, 0.3, tile=16)):
        torch.manual_seed(7)
        results.append(context_and_gradients(attend, query, key, value))  # backward recomputes the same mask
    for theirs, mine in zip(*results):
        assert (theirs - mine).abs().max().item() <= 1e-12


def test_dropout_across_tiles_drops_each_weight_as_explicit_does():
    """value = the identity, so the context is the dropped weights: each is 0 or explicit's weight / (1 - p)."""
    p, T = 0.25, 48
    query, key, _ = inputs(T, T, torch.float64)
    value = torch.eye(T, dtype=torch.float64).expand(2, 3, T, T)
    weights = explicit_attention(query, key, value)[1].detach()
    torch.manual_seed(0)
    with torch.no_grad():
        dropped = tiled_attention(query, key, value, True, p, tile=16)
    visible = weights > 0
    kept = dropped[visible] != 0
    assert torch.allclose(dropped[visible][kept], weights[visible][kept] / (1 - p), rtol=1e-12, atol=0)
    assert torch.all(dropped[~visible] == 0)
    assert abs((~kept).double().mean().item() - p) < 0.03  # 3528 weights: the share dropped is p, within 4 sigma


@pytest.mark.parametrize("value,message", [
    (0, "model.attn_tile=0 must be a positive integer: queries and keys per tile of attn_impl=tiled"),
    (2.5, "model.attn_tile=2.5 must be a positive integer"),
    ("big", "model.attn_tile='big' must be a positive integer"),
])
def test_a_bad_tile_is_one_line(value, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        typed(GPTConfig, {"attn_impl": "tiled", "attn_tile": value}, "model.")  # the command line's check
    with pytest.raises(ConfigError, match=f"^{message}"):
        GPTConfig(attn_impl="tiled", attn_tile=value)  # the same check built by hand


def test_additive_scores_with_tiled_is_one_line():
    with pytest.raises(ConfigError, match="^model.attn_score=additive cannot run with model.attn_impl=tiled: .*"
                                          "use model.attn_impl=explicit$"):
        GPTConfig(attn_impl="tiled", attn_score="additive")


def twin_gpts(**settings) -> tuple[GPT, GPT]:
    """The same weights, explicit and tiled (4 positions a tile, so the 24-token context has 6 tiles)."""
    config = dict(vocab_size=50, block_size=24, n_layer=2, n_head=3, n_embd=36, **settings)
    torch.manual_seed(0)
    explicit = GPT(GPTConfig(**config))
    ours = GPT(GPTConfig(**config, attn_impl="tiled", attn_tile=4))
    ours.load_state_dict(explicit.state_dict())
    return explicit, ours


@pytest.mark.parametrize("settings", [dict(), dict(pos_encoding="rope", qk_norm=True)])
def test_a_tiled_gpt_gives_explicits_logits_maps_and_greedy_tokens(settings):
    explicit, ours = twin_gpts(**settings, dropout=0.0)
    explicit.eval(), ours.eval()
    idx = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (explicit(idx)[0] - ours(idx)[0]).abs().max().item() <= 1e-5
    assert torch.equal(explicit.attention_maps(idx), ours.attention_maps(idx))  # maps: the explicit path, always
    prompt = idx[:, :5]
    greedy = explicit.generate(prompt, 25, temperature=0)  # the KV cache, then past block_size
    assert torch.equal(ours.generate(prompt, 25, temperature=0), greedy)
    assert torch.equal(ours.generate(prompt, 25, temperature=0, use_kv_cache=False), greedy)


def test_a_tiled_gpt_trains_with_dropout():
    _, ours = twin_gpts(dropout=0.2)
    losses = overfit_losses(ours, torch.randint(0, 50, (4, 24), generator=torch.Generator().manual_seed(2)), 15)
    assert losses[-1] < 0.8 * losses[0]


def test_the_attention_bench_runs_its_smallest_table(tmp_path, capsys):
    bench_attention.main(["--lengths", "16", "32", "--heads", "2", "--head-dim", "8", "--tile", "8",
                          "--repeats", "1", "--plot", str(tmp_path / "attention.png")])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith("| 32 | ")]
    assert [cells[1] for cells in rows] == ["explicit", "tiled", "additive", "sdpa"]
    assert all(float(cells[2]) > 0 and float(cells[3]) >= 0 and float(cells[4].strip(" |")) >= 0 for cells in rows)
    assert (tmp_path / "attention.png").stat().st_size > 0
