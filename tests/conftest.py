"""Shared fixtures: a tiny bilingual corpus on disk, a sandboxed wandb, and a runner for the real
train.py / sample.py entry points."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background of a non-interactive shell (`bash .ci/run &`) inherits an
# ignored SIGINT, and so would every entry point it starts: the Ctrl-C tests would send signals
# nobody receives. Python's own handler here makes the children start with the default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ENGLISH = "the king and the queen walk to the castle at night while the rain falls on the sea".split()
CHINESE = "国王 和 王后 在 夜里 走 向 城堡 雨 落 在 海 上 中国 人民 经济 发展".split()

# the smallest model and schedule that still exercises every code path of train.py
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.dropout=0.0",
    "train.batch_size=8", "train.max_iters=30", "train.eval_interval=15", "train.eval_windows=4",
    "train.log_interval=5", "train.warmup_iters=5", "data.vocab_size=320", "device=cpu",
]


def tiny_args(corpus: Path, data_root: Path, *extra: str) -> list[str]:
    """train.py's overrides for the tiny model on the custom corpus `corpus`, prepared into
    `data_root`; `extra` comes last and wins."""
    return [*TINY, "data=custom", f"data.text_paths=[{corpus}]", f"data.root={data_root}", *extra]


def make_tiny_corpus(folder: Path) -> Path:
    """Eight small documents, half English, half Chinese, as .txt files in `folder`."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(8):
        words, joiner = (ENGLISH, " ") if i % 2 == 0 else (CHINESE, "")
        lines = [joiner.join(rng.choice(words) for _ in range(10)) for _ in range(60)]
        (folder / f"doc{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def fresh_machine_env(folder: Path) -> dict[str, str]:
    """The environment of a fresh machine for wandb: its folders in tmp, no API key, no netrc."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[name] = str(folder / name.lower())
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    env["NETRC"] = str(folder / "no-netrc")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keeps a --target install
    return env


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return make_tiny_corpus(tmp_path / "corpus")


def run_entry(script: str, *overrides: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run train.py or sample.py as a user would: a new process, hydra overrides, no stdin."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` bytes (e.g. "256k") mounted at `folder`: writes past it fail
    with ENOSPC as on a full disk. Skips the test where mounting is not allowed (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, stdin=subprocess.DEVNULL)


# the probe texts of the shared tiny runs
PROBES = ["the king and the queen walk to the castle", "国王和王后在夜里走向城堡"]


def run_history(run_dir: Path) -> list[dict]:
    """The history rows of an offline run, read back from its .wandb log by wandb's own reader."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    result = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]
