"""The learning-rate schedule (train.py: get_lr): warmup, cosine decay, and a decay that follows
whichever budget (steps or wall-clock seconds) runs out first."""
from __future__ import annotations

import pytest

from train import get_lr
from trainer.config import TrainConfig


def schedule(warmup: int = 10, decay: int = 110, max_seconds: float = 0.0, lr: float = 1e-3, min_lr: float = 1e-4):
    return TrainConfig(learning_rate=lr, min_lr=min_lr, warmup_iters=warmup, lr_decay_iters=decay, max_iters=decay,
                       max_seconds=max_seconds)


def test_warmup_rises_linearly_then_the_cosine_falls_to_min_lr():
    tc = schedule()
    lrs = [get_lr(step, tc, seconds=0.0) for step in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5.5e-4) and lrs[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_without_a_time_budget_the_decay_follows_the_steps():
    assert get_lr(60, schedule(), seconds=1e6) == pytest.approx(5.5e-4)  # half way down, however long it took


@pytest.mark.parametrize("step, seconds, progress", [
    (60, 30.0, 0.5),    # half the steps, a quarter of the time: the steps lead
    (20, 90.0, 0.75),   # a slow machine: a tenth of the steps, three quarters of the time
    (30, 150.0, 1.0),   # past the time budget: the schedule clamps to min_lr
])
def test_with_a_time_budget_the_decay_follows_whichever_budget_is_further_along(step, seconds, progress):
    import math

    expected = 1e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (1e-3 - 1e-4)
    assert get_lr(step, schedule(max_seconds=120), seconds) == pytest.approx(expected)


def test_a_slow_machine_reaches_min_lr_when_its_time_runs_out_not_when_its_steps_would():
    # 1000 steps planned, but the time budget ends after 400 of them
    tc = schedule(warmup=50, decay=1000, max_seconds=420.0, lr=2e-3, min_lr=2e-4)
    assert get_lr(400, tc, seconds=420.0) == pytest.approx(2e-4)
