"""The induction metric on models with and without induction heads: it names a head that looks up
the token after an earlier occurrence of the current one, and no head of a random model or of one
that attends a fixed distance back (the shortcut of runs always repeated at one distance). Besides
heads formed by hand, a real GPT trained on repeats until its induction circuit forms, and the same
model at an early step, before it has."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from heads.metrics import MARGINS, head_evidence, induction_score
from model import GPT, GPTConfig

VOCAB, T = 32, 24


@pytest.fixture(scope="module")
def tokenizer():
    from data.tokenizer import train_bpe

    return train_bpe(["a = b\n中文"] * 4, vocab_size=260)  # only token_classes reads it: ids below VOCAB


def windows(seed: int) -> dict[str, torch.Tensor]:
    return {"text": torch.randint(0, VOCAB, (8, T), generator=torch.Generator().manual_seed(seed))}


class InductionHead(torch.nn.Module):
    """One layer, one head, formed by hand: each token attends to the token after the previous
    occurrence of itself, and to itself where it has none."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # head_evidence reads the device off a parameter

    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        B, n = idx.shape
        weights = torch.zeros(B, n, n)
        for b in range(B):
            for i in range(n):
                earlier = [j for j in range(i - 1) if idx[b, j] == idx[b, i]]
                weights[b, i, earlier[-1] + 1 if earlier else i] = 1.0
        return weights[None, :, None]  # (L=1, B, H=1, T, T)


def induction(model, tokenizer, seed: int = 1) -> torch.Tensor:
    evidence = head_evidence(model, windows(seed), tokenizer)
    assert evidence.chance["induction"]["text"] == 0.0  # uniform attention gains nothing from the repeat
    return torch.tensor(evidence.values["induction"]["text"])


class FixedDistanceHead(InductionHead):
    """One head that attends T/2 - 1 back by position alone, whatever the tokens: the shortcut a model
    trained on runs always repeated at T/2 learns, and exactly the key the weight on [w, w] looks at."""

    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        B, n = idx.shape
        i = torch.arange(n)
        weights = torch.zeros(B, n, n)
        weights[:, i, (i - (n // 2 - 1)).clamp_min(0)] = 1.0
        return weights[None, :, None]


def test_a_formed_induction_head_is_named(tokenizer):
    assert induction(InductionHead(), tokenizer).item() > 0.5  # chance is 0, the margin 0.1


def test_no_head_of_a_random_model_is_named(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    assert induction(model, tokenizer).max().item() < MARGINS["induction"]


def test_a_head_that_attends_a_fixed_distance_back_is_not_named(tokenizer):
    model = FixedDistanceHead()
    run = windows(2)["text"][:, : T // 2]
    assert induction_score(model.attention_maps(torch.cat([run, run], 1))).mean().item() == 1.0  # the old score
    assert induction(model, tokenizer).item() == 0.0


# The trained model: 2 layers of 2 heads on runs of random tokens repeated to fill the window. A run's
# length is drawn per window (4..16), so no fixed distance back predicts the repeat: the model lowers
# its loss only by looking up where the current token occurred before (a previous-token head in
# layer 0, an induction head in layer 1). RoPE and 64 tokens form the circuit within ~300 steps.
RUN_VOCAB, RUN_T = 64, 32
EARLY, TRAINED = 100, 400  # steps: before the phase change (~250-350 here) and after it


def tiled_runs(generator: torch.Generator, batch: int) -> torch.Tensor:
    """(batch, RUN_T + 1): per window a run of 4..RUN_T/2 random tokens, repeated to fill it."""
    runs = torch.randint(0, RUN_VOCAB, (batch, RUN_T // 2), generator=generator)
    lengths = torch.randint(4, RUN_T // 2 + 1, (batch, 1), generator=generator)
    return runs.gather(1, torch.arange(RUN_T + 1) % lengths)


@torch.no_grad()
def half_losses(model: GPT) -> tuple[float, float]:
    """Mean next-token loss on [w, w] windows: on the first w (nothing to look up: ln 64 at best but
    for the tokens already seen in it) and on the repeat, from its second token (induction predicts
    each from the first w)."""
    n = RUN_T // 2
    w = torch.randint(0, RUN_VOCAB, (64, n), generator=torch.Generator().manual_seed(2))
    x = torch.cat([w, w], 1)
    losses = F.cross_entropy(model(x)[0][:, :-1].transpose(1, 2), x[:, 1:], reduction="none")  # (64, 2n - 1)
    return losses[:, : n - 1].mean().item(), losses[:, n:].mean().item()


@pytest.fixture(scope="module")
def repeats():
    """{"early": the model at step EARLY, "trained": at step TRAINED, "losses": step -> the repeat's loss}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order under pytest, xdist or a script
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=RUN_VOCAB, block_size=RUN_T, n_layer=2, n_head=2, n_embd=64, dropout=0.0,
                              pos_encoding="rope"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.0)
        data = torch.Generator().manual_seed(0)
        found = {"losses": {}}
        for step in range(TRAINED + 1):
            if step % 50 == 0:
                found["losses"][step] = half_losses(model)[1]
            if step == EARLY:
                found["early"] = copy.deepcopy(model)
            if step == TRAINED:
                break
            x = tiled_runs(data, 64)
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        found["trained"] = model
    finally:
        torch.set_num_threads(threads)
    return found


def run_gains(model: GPT, tokenizer) -> torch.Tensor:
    """(n_layer, n_head) induction gain on 16 random windows of RUN_T tokens."""
    ids = torch.randint(0, RUN_VOCAB, (16, RUN_T), generator=torch.Generator().manual_seed(1))
    return torch.tensor(head_evidence(model, {"text": ids}, tokenizer).values["induction"]["text"])


def test_the_loss_on_a_repeat_falls_far_below_chance_only_after_the_early_step(repeats):
    # before, what the model learns first (a guess among the tokens seen already?) lowers it a little
    chance = math.log(RUN_VOCAB)  # 4.16
    assert repeats["losses"][EARLY] > chance - 0.6  # 3.78
    assert repeats["losses"][TRAINED] < 1.5  # 1.00


def test_a_trained_model_names_a_layer_1_head_and_no_layer_0_head(repeats, tokenizer):
    # layer 0 sees only tokens and positions: it can move the previous token forward, not look it up
    gains = run_gains(repeats["trained"], tokenizer)
    assert gains[1].max().item() > 0.4  # 0.55 and 0.54
    assert gains[0].abs().max().item() < MARGINS["induction"] / 2  # 0.005


def test_no_head_is_named_before_the_phase_change(repeats, tokenizer):
    assert run_gains(repeats["early"], tokenizer).max().item() < MARGINS["induction"] / 4  # 0.007


def test_silencing_the_named_head_costs_the_repeat_and_not_the_first_occurrence(repeats, tokenizer):
    model = repeats["trained"]
    layer, head = divmod(run_gains(model, tokenizer).argmax().item(), model.config.n_head)
    first, repeat = half_losses(model)
    model.blocks[layer].attn.head_mask = torch.ones(model.config.n_head)
    model.blocks[layer].attn.head_mask[head] = 0.0
    try:
        silenced_first, silenced_repeat = half_losses(model)
    finally:
        model.blocks[layer].attn.head_mask = None
    assert silenced_repeat - repeat > 0.6  # 1.00 -> 2.02
    assert silenced_first - first < 0.1  # 4.99 -> 4.90
