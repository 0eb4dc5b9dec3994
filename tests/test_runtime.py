"""Precision and host memory: dtype=auto never picks a dtype the CPU only emulates, and asking for
one says what it costs; with reuse_host_memory, CPU training steps reuse their pages instead of
faulting fresh ones in every step."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainer.runtime
from trainer.runtime import resolve_dtype

REPO = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_never_automatic_and_warns_when_asked_for(monkeypatch, capsys, native):
    monkeypatch.setattr(trainer.runtime, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert capsys.readouterr().err == ""
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16  # the user's choice stands
    warning = capsys.readouterr().err
    assert warning.startswith("warning: dtype=bfloat16 on a CPU without bf16 instructions") if not native else warning == ""
    assert warning.count("\n") == (0 if native else 1)


# a small GPT with a large vocabulary (its logits are 16 MiB), trained for 8 steps to settle,
# then the page faults of 3 more steps (twice)
STEPS = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from model import GPT, GPTConfig
from trainer.runtime import reuse_host_memory
if {reuse}:
    assert reuse_host_memory()
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=8192, block_size=128, n_layer=2, n_head=2, n_embd=64))
optimizer = torch.optim.AdamW(model.parameters())
idx = torch.randint(0, 8192, (16, 128))
def step():
    model(idx, idx)[1].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(8):
    step()
faults = []
for _ in range(2):  # the quieter of two windows: a one-time 64 MiB arena may land in either
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


def page_faults_of_three_steps(reuse: bool) -> int:
    code = STEPS.format(repo=str(REPO), reuse=reuse)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_training_steps_reuse_host_memory_instead_of_faulting_it_in():
    logits_pages = 3 * 16 * 128 * 8192 * 4 // 4096  # the fp32 logits of three steps, in 4 KiB pages
    assert page_faults_of_three_steps(reuse=False) > logits_pages  # glibc's defaults: fresh pages every step
    assert page_faults_of_three_steps(reuse=True) < logits_pages // 100
