"""Faults during training, in this process: non-finite steps counted in a row and reset by a finite
one, and a skipped step that leaves weights and optimizer state untouched without the host reading
the flag. The faults met through the real train.py (kill -9, non-finite steps that stop a run, an
out_dir that cannot be written, damaged or mismatched data) are in tests/test_faults_cli.py."""
from __future__ import annotations

import pytest
import torch

from trainer.guards import NonFiniteGuard, step_unless
from trainer.optim import make_optimizers


def test_a_finite_step_resets_the_count_of_non_finite_steps_in_a_row():
    guard = NonFiniteGuard(max_in_row=2, verbose=False)
    for step, norm in enumerate([float("nan"), 1.0, float("inf"), float("nan"), 1.0], start=1):
        guard.check(step, torch.tensor(norm))
    assert guard.failure() is None and guard.skipped == 0  # nothing is read before log time
    guard.read()
    assert guard.skipped == 3 and "at 2 steps in a row (steps 3 to 4)" in str(guard.failure())


class NoHostRead(torch.Tensor):
    """A tensor whose value the host must not read: a code path that syncs on it fails."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.tolist):
            raise AssertionError(f"the host read the flag ({func.__name__})")
        return super().__torch_function__(func, types, args, kwargs)


def optimizers_after_one_step(optimizer: str):
    from model import GPT, GPTConfig
    from trainer.config import TrainConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tc = TrainConfig(optimizer=optimizer, weight_decay=0.1, learning_rate=1e-2, beta1=0.9, beta2=0.99)
    optimizers = make_optimizers(model, tc, torch.device("cpu"))
    idx = torch.randint(0, 32, (2, 8))
    model(idx, idx)[1].backward()
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizers, idx


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_non_finite_step_leaves_weights_and_optimizer_state_untouched(optimizer):
    model, optimizers, idx = optimizers_after_one_step(optimizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    states = [{id(p): {k: v.clone() for k, v in s.items()} for p, s in o.state.items()} for o in optimizers]
    model.wte.weight.register_hook(lambda g: g * float("nan"))  # every gradient that flows into it is NaN
    model(idx, idx)[1].backward()
    nonfinite = ~torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    step_unless(nonfinite.as_subclass(NoHostRead), optimizers, torch.amp.GradScaler("cpu", enabled=False))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    for o, before in zip(optimizers, states):
        assert all(torch.equal(before[id(p)][k], v) for p, s in o.state.items() for k, v in s.items())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_optimizers_step_when_the_flag_is_false_without_the_host_reading_it(optimizer):
    model, optimizers, idx = optimizers_after_one_step(optimizer)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    model(idx, idx)[1].backward()
    step_unless(torch.tensor(False).as_subclass(NoHostRead), optimizers, torch.amp.GradScaler("cpu", enabled=False))
    assert all(not torch.equal(weights[k], v) for k, v in model.named_parameters())
