"""The logic of the GPU path, proved on a CPU through the real entry points in child processes:
gradient clipping that did nothing (train.py's evaluated losses), resumes that moved random states
to the GPU (a checkpoint written by train.py, resumed onto the meta device), and data prepared on
one node only (two torchrun "nodes"). tests/test_gpu_path.py holds the in-process half."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    ADAMW,
    REPO,
    TINY,
    free_port,
    fresh_machine_env,
    make_tiny_corpus,
    run_entry,
)

from data.batches import TrainSampler
from model import GPT, GPTConfig
from data.checkpoint import load_checkpoint
from trainer.config import RunConfig, TrainConfig
from trainer.optim import make_optimizers

EVAL_LINE = re.compile(r"^eval step (\d+) \([\d.]+s\): val loss ([\d.]+)", re.MULTILINE)


def val_losses(setup: dict, name: str, *extra: str) -> dict[int, float]:
    result = run_entry("train.py", *setup["args"], f"out_dir={setup['tmp'] / name}", *extra, cwd=setup["tmp"],
                       env=setup["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    return {int(step): float(loss) for step, loss in EVAL_LINE.findall(result.stdout)}


def test_gradient_clipping_through_train_py_holds_the_weights_still(tiny_run):
    # clipped to a norm of 1e-12, AdamW's updates are ~lr * 1e-12 / eps = lr * 1e-4: the loss stays where it was
    clipped = val_losses(tiny_run, "clipped", "train.grad_clip=1e-12")
    free = val_losses(tiny_run, "free", "train.grad_clip=0")
    assert clipped[0] == free[0]  # the same initial model
    assert free[0] - free[30] > 0.3  # the same 30 steps unclipped learn
    assert abs(clipped[30] - clipped[0]) < 0.01


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights hold no values
def test_resume_keeps_random_states_on_the_cpu_whatever_the_device(tiny_run):
    """Weights and optimizer state go to the device; the RNG and sampler states must stay CPU
    ByteTensors (torch.set_rng_state and Generator.set_state take nothing else). `meta` stands in
    for a GPU: a checkpoint mapped onto it fails the same way a CUDA one did."""
    from trainer.guards import resume

    val_losses(tiny_run, "out", "train.max_iters=3")
    out = tiny_run["tmp"] / "out"
    checkpoint = load_checkpoint(out)
    model_cfg = GPTConfig(**checkpoint["model_config"])
    device = torch.device("meta")
    with device:  # built there (.to("meta") would untie the head from the embedding)
        model = GPT(model_cfg)
    optimizers = make_optimizers(model, ADAMW, device)
    sampler = TrainSampler(np.zeros(100, dtype=np.uint16), model_cfg.block_size, 8, seed=0)
    cfg = RunConfig(train=TrainConfig(resume="true", max_iters=3))
    step = resume(cfg, out, device, model, model_cfg, optimizers, sampler, checkpoint["tokenizer_hash"]).step
    assert step == 3
    assert torch.equal(sampler.generator.get_state(), checkpoint["sampler"])
    assert torch.equal(torch.get_rng_state(), checkpoint["rng"][0]["torch"])


@pytest.mark.slow
def test_every_node_prepares_its_own_data_without_a_shared_file_system(tmp_path):
    """Two torchrun "nodes" on this machine, each with its own data.root: the second node's
    processes find no bins unless its own local rank 0 prepares them."""
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = {**fresh_machine_env(tmp_path), "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", str(REPO / "train.py"),
                   *TINY, "data=custom", f"data.text_paths=[{corpus}]", f"data.root={tmp_path / f'node{node}'}",
                   f"out_dir={tmp_path / f'out{node}'}", "train.max_iters=4", "train.eval_interval=100",
                   "dtype=float32", "wandb.mode=disabled"]
        nodes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, stdin=subprocess.DEVNULL))
    results = [node.communicate(timeout=300) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, results):
        assert node.returncode == 0, stderr[-3000:]
    for node in (0, 1):
        assert (tmp_path / f"node{node}" / "custom" / "meta.json").is_file()
    assert "done in" in results[0][0]
    assert (tmp_path / "out0" / "ckpt.pt").is_file() and not (tmp_path / "out1").exists()  # only rank 0 writes
