"""Issue 15 (items 4 and 7), through the real entry points in child processes: UTF-8 values work
unquoted on every entry point's command line, and a mistyped key or group option is one `error:`
line naming the closest valid one, exit 2. hydra_argv's own tests are in tests/test_cli_overrides.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny run whose corpus folder, out_dir and wandb name are all non-ASCII and unquoted."""
    tmp = tmp_path_factory.mktemp("utf8")
    corpus = make_tiny_corpus(tmp / "文本")
    env = fresh_machine_env(tmp)
    result = run_entry("train.py", *tiny_args(corpus, tmp / '数据'),
                       f"out_dir={tmp / '输出'}", "wandb.name=实验", "wandb.mode=disabled", "dtype=float32",
                       cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp / "输出" / "ckpt.pt").is_file() and (tmp / "数据").is_dir()
    return {"tmp": tmp, "out": tmp / "输出", "env": env}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("prompt", ["人民日报", "héllo"])
def test_sample_takes_an_unquoted_utf8_prompt(trained: dict, prompt: str) -> None:
    result = run_entry("sample.py", f"prompt={prompt}", f"out_dir={trained['out']}", "max_new_tokens=5",
                       "device=cpu", cwd=trained["tmp"], env=trained["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"--- sample 1/1 (prompt {prompt!r}) ---" and lines[1].startswith(prompt), result.stdout


def test_heads_report_takes_unquoted_utf8_paths_and_probes(trained: dict) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "heads.report", f"out_dir={trained['out']}", "probes=[国王和王后, héllo world]",
         "probe_tokens=8", "device=cpu"],
        cwd=REPO, env=trained["env"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (trained["out"] / "heads").is_dir()


@pytest.mark.parametrize(("args", "expected"), [
    (["model.n_layr=3"], ("error: model.n_layr is not a setting: did you mean model.n_layer? "
                          "(python train.py --cfg job lists them all)")),
    (["preset=gpu"], "error: preset=gpu is not an option: preset is one of cpu, gpt2 (config/preset/), or none: leave preset= out"),
    (["preset=null"], "error: preset=null is not an option: preset is one of cpu"),  # hydra's own: a traceback
    (["preset=cpu", "recipe=null"], "error: recipe=null is not an option: recipe is one of baseline, fast (config/recipe/)"),
    (["data=custm"], "data is one of bilingual, custom"),
])
def test_unknown_key_or_option_is_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = run_entry("train.py", *args, cwd=tmp_path, env=fresh_machine_env(tmp_path))
    assert expected in one_error_line(result)


def test_unknown_key_on_sample_and_hydra_keys_still_work(tmp_path: Path) -> None:
    env = fresh_machine_env(tmp_path)
    assert "did you mean temperature?" in one_error_line(run_entry("sample.py", "temprature=1", cwd=tmp_path, env=env))
    shown = run_entry("train.py", "+extra=1", "~seed", "hydra.job.chdir=false", "recipe=fast", "--cfg", "job",
                      cwd=tmp_path, env=env)
    assert shown.returncode == 0 and "extra: 1" in shown.stdout and "seed:" not in shown.stdout, shown.stderr


# --- issue 26: a string setting takes the text typed; what hydra cannot read is one line ------------

def test_everyday_punctuation_in_a_string_setting_is_taken_as_typed(trained: dict) -> None:
    env = {**trained["env"], "HOME": str(trained["tmp"])}  # out_dir=~/输出 is the trained run, unexpanded as zsh sends it
    for prompt in ["What's this? To be, or not to be!", "中国,人民"]:
        result = run_entry("sample.py", f"prompt={prompt}", "out_dir=~/输出", "max_new_tokens=2", "device=cpu",
                           cwd=trained["tmp"], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.splitlines()[0] == f"--- sample 1/1 (prompt {prompt!r}) ---"


def test_deleting_a_null_setting_works(tmp_path: Path) -> None:
    shown = run_entry("train.py", "~wandb.name", "--cfg", "job", cwd=tmp_path, env=fresh_machine_env(tmp_path))
    assert shown.returncode == 0 and "  name: null" in shown.stdout, shown.stderr


@pytest.mark.parametrize(("arg", "expected"), [
    ("out_dir=a\nb", "error: out_dir='a\\nb' must be a path without line breaks, tabs or other control characters"),
    ("out_dir=/tmp/caf\udce9", "error: out_dir=/tmp/caf\\xe9 is not UTF-8 text (byte 0xe9): "),  # the byte 0xe9 in argv
    ("seed=1,2", "error: seed=1,2 gives several values: add -m to run one job for each (python sample.py -m ...)"),
])
def test_a_value_hydra_cannot_take_is_one_line_before_anything_is_made(tmp_path: Path, arg: str, expected: str) -> None:
    result = run_entry("sample.py", arg, cwd=tmp_path, env=fresh_machine_env(tmp_path))
    assert one_error_line(result).startswith(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name.lower() for name in (
        "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"))  # nothing made beside the test's own
