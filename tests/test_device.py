"""Precision: dtype=auto never picks a dtype the CPU only emulates, and asking for one says what it
costs. The host-memory half (training steps that reuse their pages) counts page faults in a fresh
child process, so it is in tests/test_runtime_cli.py."""
import pytest
import torch

import common.device
from common.device import resolve_dtype


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_never_automatic_and_warns_when_asked_for(monkeypatch, capsys, native):
    monkeypatch.setattr(common.device, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert capsys.readouterr().err == ""
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16  # the user's choice stands
    warning = capsys.readouterr().err
    assert warning.startswith("warning: dtype=bfloat16 on a CPU without bf16 instructions") if not native else warning == ""
    assert warning.count("\n") == (0 if native else 1)
