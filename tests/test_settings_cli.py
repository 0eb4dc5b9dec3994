"""Bad settings through the real entry points, each in a child process: train.py, sample.py and
python -m heads.report stop at a bad value with one `error:` line and exit 2, before writing or
reading anything. The rules themselves (common/settings.py, trainer/config.py, data/config.py)
are tested in process in tests/test_settings.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TINY, fresh_machine_env, make_tiny_corpus, run_entry

# --- through the real entry points ------------------------------------------------------------


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("settings")
    return {"corpus": make_tiny_corpus(tmp / "corpus"), "env": fresh_machine_env(tmp / "machine")}


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr[-2000:]


@pytest.mark.parametrize("override,message", [  # a range and a type; every rule: tests/test_settings.py
    ("train.learning_rate=-1", "train.learning_rate=-1 must be"),
    ("data.vocab_size=abc", "data.vocab_size='abc' must be"),
])
def test_train_stops_at_a_bad_setting_before_writing_anything(machine, tmp_path, override, message):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_entry("train.py", *TINY, "data=custom", f"data.text_paths=[{machine['corpus']}]",
                       f"data.root={tmp_path / 'prepared'}", f"out_dir={tmp_path / 'out'}", override,
                       cwd=cwd, env=machine["env"])
    assert_one_error_line(result, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists() and not list(cwd.iterdir())


@pytest.mark.parametrize("override,message", [
    ("temperature=1e-40", "temperature=1e-40 must be 0 (greedy) or at least"),
    ("temperature=hot", "temperature='hot' must be"),
])
def test_sample_stops_at_a_bad_setting_before_loading_a_model(machine, tmp_path, override, message):
    # out_dir holds no checkpoint: the setting is refused before anything is read
    result = run_entry("sample.py", f"out_dir={tmp_path / 'none'}", override, cwd=tmp_path, env=machine["env"])
    assert_one_error_line(result, message)


def test_the_heads_report_refuses_a_file_as_report_dir_and_too_few_probe_tokens(machine, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for override, message in ((f"report_dir={a_file}", f"report_dir='{a_file}' must be a folder"),
                              ("probe_tokens=0", "probe_tokens=0 must be an integer >= 2")):
        result = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={tmp_path / 'none'}", override],
                                cwd=tmp_path, env=machine["env"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=600)
        assert_one_error_line(result, message)
