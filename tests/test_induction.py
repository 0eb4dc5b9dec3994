"""The induction metric on models with and without induction heads: it names a head that looks up
the token after an earlier occurrence of the current one, and no head of a random model or of one
that attends a fixed distance back (the shortcut of runs always repeated at one distance)."""
from __future__ import annotations

import pytest
import torch

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
