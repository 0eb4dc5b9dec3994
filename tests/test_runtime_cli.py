"""Host memory: with reuse_host_memory, CPU training steps reuse their pages instead of faulting
fresh ones in every step. The steps run in a child Python process (`python -c`), whose page-fault
count holds nothing of this test process's allocations; tests/test_device.py holds the precision
half."""
import platform
import subprocess
import sys

import pytest
from conftest import REPO

# a small GPT with a large vocabulary (its logits are 16 MiB), trained for 8 steps to settle,
# then the page faults of 3 more steps (three times)
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
for _ in range(3):  # the quietest of three windows: a one-time 64 MiB arena (16384 faults) may land in any
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
