"""The training step replayed as one CUDA graph (trainer/cuda_graph.py) trains as the eager step does,
on the CPU through conftest.py's stand-in for a CUDA graph (the same kernels replayed on the same
memory): the same losses, gradient norms and weights, bit for bit, with a learning rate that changes
every step, two micro-batches, Muon, dropout; and the settings rule that turns it on. A replay reads
each rate as float32 (as CUDA's fused AdamW does), eager as a Python float: the rates here are float32
numbers, except train.py's own schedule, whose run is the eager one's to float32 precision.
tests/gpu/test_gpu_training_cli.py records the real thing."""
from __future__ import annotations

import re
from functools import partial

import pytest
import torch
from conftest import composed, make_tiny_corpus, tiny_args

import train
from common.errors import ConfigError
from common.settings import typed
from model import GPT, GPTConfig
from train import loss_scaler, train_step
from trainer import distributed, guards
from trainer.config import RunConfig, TrainConfig
from trainer.cuda_graph import WARMUP_STEPS, GraphedTrainStep
from trainer.optim import make_optimizers

CPU = torch.device("cpu")
STEPS = 8


def train_steps(graphed: bool, optimizer: str, grad_accum: int,
                dropout: float) -> tuple[list[tuple], list[torch.Tensor]]:
    """(loss, gradient norm, non-finite) of each step, read after the last one as train.py reads them at
    log time, and the weights at the end."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout))
    tc = TrainConfig(optimizer=optimizer, grad_accum=grad_accum)
    optimizers = make_optimizers(model, tc, CPU)
    step = partial(train_step, model, model, optimizers, loss_scaler(CPU, torch.float32), tc=tc, dtype=torch.float32)
    if graphed:
        step = GraphedTrainStep(step, optimizers, CPU)
    for optimizer in optimizers:  # as resuming does, after the step is built: new param group dicts
        optimizer.load_state_dict(optimizer.state_dict())
    data = torch.Generator().manual_seed(1)
    outputs = []
    for i in range(STEPS):
        for group in (group for optimizer in optimizers for group in optimizer.param_groups):
            group["lr"] = 2.0 ** -9 * (i + 1)  # a warmup: each step's rate must reach the replay (float32 holds it)
        batch = torch.randint(0, 64, (4, 17), generator=data)
        outputs.append(step(batch[:, :-1], batch[:, 1:]))
    return [tuple(t.item() for t in out) for out in outputs], [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer,grad_accum,dropout", [("adamw", 1, 0.0), ("muon", 2, 0.0), ("adamw", 1, 0.1)])
def test_a_replayed_training_step_trains_as_the_eager_one(fake_cuda_graphs, optimizer, grad_accum, dropout):
    eager_outputs, eager_weights = train_steps(False, optimizer, grad_accum, dropout)
    outputs, weights = train_steps(True, optimizer, grad_accum, dropout)
    assert outputs == eager_outputs  # every step's, each read after the last: none overwritten by a later replay
    assert all(torch.equal(a, b) for a, b in zip(weights, eager_weights))
    assert len(fake_cuda_graphs) == 1 and fake_cuda_graphs[0].replays == STEPS - WARMUP_STEPS


def test_a_step_that_cannot_be_recorded_says_so_once_and_trains_on_eagerly(fake_cuda_graphs, capsys):
    def run(graphed: bool) -> list[float]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
        tc = TrainConfig()
        # unfused AdamW: the non-finite check reads its flag on the host, after the backward pass (as on MPS)
        optimizers = [torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, fused=False, foreach=False)]
        step = partial(train_step, model, model, optimizers, loss_scaler(CPU, torch.float32), tc=tc,
                       dtype=torch.float32)
        if graphed:
            step = GraphedTrainStep(step, optimizers, CPU)
        data = torch.Generator().manual_seed(1)
        return [step(batch[:, :-1], batch[:, 1:])[0].item()
                for batch in (torch.randint(0, 64, (4, 17), generator=data) for _ in range(STEPS))]

    stream = torch.cuda.current_stream()
    assert run(True) == run(False)  # the failed recording's gradients are not added to the next step's
    assert torch.cuda.current_stream() is stream  # not the failed recording's
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: the training step could not be recorded as a "
                                                         "CUDA graph (aten._local_scalar_dense.default reads a value")
    assert warnings[0].endswith("it runs without one (cuda_graph=false skips the attempt)")


def test_the_checkpointed_optimizer_keeps_float_learning_rates(fake_cuda_graphs):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    tc = TrainConfig(optimizer="muon")
    optimizers = make_optimizers(model, tc, CPU)
    step = GraphedTrainStep(partial(train_step, model, model, optimizers, loss_scaler(CPU, torch.float32), tc=tc,
                                    dtype=torch.float32), optimizers, CPU)
    batch = torch.randint(0, 64, (2, 17))
    for _ in range(WARMUP_STEPS + 2):
        step(batch[:, :-1], batch[:, 1:])
    groups = [group for optimizer in optimizers for group in optimizer.state_dict()["param_groups"]]
    assert all(type(group["lr"]) is float and not group.get("capturable", False) for group in groups)


def run_config(*overrides: str) -> RunConfig:
    return typed(RunConfig, composed("train", *overrides), "")


@pytest.mark.parametrize("setting,device_type,world_size,dtype,records", [
    ("auto", "cuda", 1, torch.bfloat16, True), ("auto", "cuda", 1, torch.float32, True),
    ("auto", "cpu", 1, torch.float32, False), ("auto", "cuda", 2, torch.bfloat16, False),
    ("auto", "cuda", 1, torch.float16, False), ("false", "cuda", 1, torch.bfloat16, False),
    ("true", "cuda", 1, torch.bfloat16, True),
])
def test_cuda_graph_auto_records_one_cuda_gpus_step_in_bf16_or_fp32(setting, device_type, world_size, dtype, records):
    assert run_config(f"cuda_graph={setting}").records_cuda_graph(device_type, world_size, dtype) == records


def test_cuda_graph_true_where_it_cannot_record_is_one_line():
    with pytest.raises(ConfigError) as caught:
        run_config("cuda_graph=true").records_cuda_graph("cuda", 2, torch.bfloat16)
    assert str(caught.value) == ("cuda_graph=true records one CUDA GPU's step in bf16 or fp32 (this run: cuda, "
                                 "2 process(es), bfloat16): use cuda_graph=auto")


def test_train_py_replays_its_step_and_takes_the_eager_runs_steps(fake_cuda_graphs, tmp_path, monkeypatch, capsys):
    """The whole loop on the stand-in: the schedule, the log-time reads, the evaluations and the
    checkpoint between replays; the printed losses and the saved weights are the eager run's."""
    monkeypatch.setattr(train, "peak_flops", lambda device, dtype: (1e12, "a test peak"))  # no 2 s CPU measurement
    corpus = make_tiny_corpus(tmp_path / "corpus")

    def run(setting: str) -> tuple[list[str], dict]:
        out = tmp_path / setting
        cfg = run_config(*tiny_args(corpus, tmp_path / "prepared"), f"out_dir={out}", "train.max_iters=12",
                         "train.eval_interval=6", "train.log_interval=2", "train.warmup_iters=4", "dtype=float32",
                         "wandb.mode=disabled", "model.dropout=0.1")
        # on this CPU as a GPU would: records_cuda_graph decides, the stand-in records
        monkeypatch.setattr(RunConfig, "records_cuda_graph", lambda self, *args: setting == "graph")
        train.train(cfg, distributed.Ranks(), "cpu", guards.LastSave(out))
        printed = capsys.readouterr().out
        losses = re.findall(r"^(?:eval )?step \d+.*?loss ([\d.]+)", printed, re.M)  # training and validation
        return losses, torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)["model"]

    eager_losses, eager_weights = run("eager")
    losses, weights = run("graph")
    assert len(losses) == 9 and losses == eager_losses  # 6 progress lines, evaluations at steps 0, 6 and 12
    torch.testing.assert_close(weights, eager_weights, rtol=1e-6, atol=1e-9)  # the rates in float32, eager's not
    assert fake_cuda_graphs[0].replays == 12 - WARMUP_STEPS
