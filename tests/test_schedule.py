"""The learning-rate schedule: warmup, cosine decay, and a decay that follows whichever budget
(steps or wall-clock seconds) runs out first."""
from __future__ import annotations

import pytest

from trainer.schedule import decay_progress, learning_rate


def test_warmup_rises_linearly_then_the_cosine_falls_to_min_lr():
    lrs = [learning_rate(step, 1e-3, 1e-4, 10, decay_progress(step, 10, 110)) for step in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5.5e-4) and lrs[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_without_a_time_budget_the_decay_follows_the_steps():
    assert decay_progress(60, 10, 110, seconds=1e6, max_seconds=0) == pytest.approx(0.5)


@pytest.mark.parametrize("step, seconds, expected", [
    (60, 30.0, 0.5),    # half the steps, a quarter of the time: the steps lead
    (20, 90.0, 0.75),   # a slow machine: a tenth of the steps, three quarters of the time
    (30, 150.0, 1.25),  # past the time budget: the schedule clamps to min_lr
])
def test_with_a_time_budget_the_decay_follows_whichever_budget_is_further_along(step, seconds, expected):
    assert decay_progress(step, 10, 110, seconds, max_seconds=120) == pytest.approx(expected)


def test_a_slow_machine_reaches_min_lr_when_its_time_runs_out_not_when_its_steps_would():
    # 1000 steps planned, but the time budget ends after 400 of them
    at_the_end = decay_progress(400, 50, 1000, seconds=420.0, max_seconds=420.0)
    assert learning_rate(400, 2e-3, 2e-4, 50, at_the_end) == pytest.approx(2e-4)
