"""Faults while preparing the data, through `python -m data.prepare` and train.py as a user meets
them: a full disk, two preparations of one folder at once, a corrupt tokenizer.json, a text that is
a single document, Ctrl-C, and a text larger than memory should allow."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CHINESE, ENGLISH, TINY, fresh_machine_env, run_entry, small_tmpfs, tiny_args

from common.folders import TEMP_SUFFIX, folder_lock
from data.tokenizer import Tokenizer


def make_corpus(folder: Path, files: int = 8, lines: int = 2000, seed: int = 0, spaced: bool = False) -> Path:
    """`files` documents of `lines` random lines of 10 words each, alternately English and Chinese
    (~50 bytes a line). spaced: Chinese words too are separated by spaces, so the whole text has
    only the few dozen distinct words the BPE counts (unspaced, every Chinese line is one)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        words, joiner = (ENGLISH, " ") if i % 2 == 0 else (CHINESE, " " if spaced else "")
        text = "\n".join(joiner.join(rng.choice(words) for _ in range(10)) for _ in range(lines))
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return folder


def prepare_args(corpus: Path, root: Path) -> list[str]:
    return ["data=custom", f"data.text_paths=[{corpus}]", f"data.root={root}", "data.vocab_size=320"]


def prepare_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "data.prepare", *overrides]


def run_prepare(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(prepare_command(*overrides), cwd=tmp_path, env=fresh_machine_env(tmp_path),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def fill(disk: Path) -> None:
    """Write a file on `disk` until it is full."""
    with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_a_full_disk_while_writing_bins_is_one_line_naming_the_folder_and_leaves_no_temp_file(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")  # ~1 MB of text: bins of several hundred KB
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        result = run_prepare(tmp_path, *prepare_args(corpus, disk))
        line = one_error_line(result)
        folder = disk / "custom"
        assert f"{folder} (No space left on device)" in line
        assert "free space there or set data.root" in line and "nothing already prepared there was replaced" in line
        assert "data: tokenizing" in result.stdout  # it failed writing the bins, not before
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no temp file, no half folder


def test_a_rebuild_that_meets_a_full_disk_leaves_the_prepared_folder_intact(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        assert run_prepare(tmp_path, *prepare_args(corpus, disk)).returncode == 0
        folder = disk / "custom"
        before = digests(folder)
        assert sorted(before) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
        fill(disk)
        make_corpus(corpus, seed=1)  # new text: the bins must be rebuilt, and there is no room
        line = one_error_line(run_prepare(tmp_path, *prepare_args(corpus, disk)))
        assert f"{folder} (No space left on device)" in line
        assert digests(folder) == before  # every old file as it was, no temp file left
        (disk / "filler").unlink()
        rebuilt = run_prepare(tmp_path, *prepare_args(corpus, disk))  # with room again, the rebuild goes through
        assert rebuilt.returncode == 0 and "data: prepared" in rebuilt.stdout


def test_two_preparations_of_one_folder_at_once_prepare_it_once_and_both_succeed(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", lines=200)
    root = tmp_path / "prepared"
    env = {**fresh_machine_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    processes = []
    with folder_lock(root / "custom", "data.root"):  # this test holds the folder: both must wait for it
        for i in range(2):
            with open(tmp_path / f"out{i}", "w") as out, open(tmp_path / f"err{i}", "w") as err:
                processes.append(subprocess.Popen(prepare_command(*prepare_args(corpus, root)), cwd=tmp_path, env=env,
                                                  stdout=out, stderr=err, stdin=subprocess.DEVNULL))
            deadline = time.time() + 120
            while "waiting for" not in (tmp_path / f"err{i}").read_text() and time.time() < deadline:
                assert processes[i].poll() is None, (tmp_path / f"err{i}").read_text()
                time.sleep(0.05)
            assert f"waiting for pid {os.getpid()} on " in (tmp_path / f"err{i}").read_text()
            assert f"which is writing {root / 'custom'}" in (tmp_path / f"err{i}").read_text()
    for process in processes:
        assert process.wait(timeout=600) == 0
    outs = [(tmp_path / f"out{i}").read_text() for i in range(2)]
    assert sum("data: prepared" in out for out in outs) == 1  # one preparation ...
    assert sum(f"data: {root / 'custom'} is up to date" in out for out in outs) == 1  # ... the other found it done
    assert sorted(p.name for p in (root / "custom").iterdir()) == [".lock", "meta.json", "tokenizer.json", "train.bin",
                                                                    "val.bin"]


@pytest.fixture
def setup(tmp_path) -> dict:
    corpus = make_corpus(tmp_path / "corpus", lines=60)
    args = [*tiny_args(corpus, tmp_path / 'prepared'),
            "dtype=float32", "wandb.mode=disabled", "train.max_iters=1"]
    return {"tmp": tmp_path, "env": fresh_machine_env(tmp_path), "args": args, "bins": tmp_path / "prepared" / "custom"}


def train(setup: dict, out: str) -> subprocess.CompletedProcess:
    return run_entry("train.py", *setup["args"], f"out_dir={setup['tmp'] / out}", cwd=setup["tmp"], env=setup["env"])


def test_a_corrupt_tokenizer_json_is_rebuilt_and_training_goes_on(setup):
    # a truncated one and a foreign one, in process: tests/test_corpus.py
    assert train(setup, "out1").returncode == 0
    tokenizer = setup["bins"] / "tokenizer.json"
    tokenizer.write_bytes(b"\x00garbage")
    result = train(setup, "out2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data: training a 320-token BPE" in result.stdout  # rebuilt, not trusted (and not stuck)
    meta = json.loads((setup["bins"] / "meta.json").read_text())
    assert Tokenizer.load(tokenizer).hash == meta["tokenizer_hash"]


def test_custom_text_that_is_a_single_document_is_one_line_naming_the_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("one paragraph\nand its second line, but no blank line anywhere\n", encoding="utf-8")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")  # a file of white space is no document
    env = fresh_machine_env(tmp_path)
    for paths in (f"[{notes}]", f"[{notes},{blank}]"):
        result = run_entry("train.py", *TINY, "data=custom", f"data.text_paths={paths}", f"data.root={tmp_path / 'p'}",
                           f"out_dir={tmp_path / 'out'}", "wandb.mode=disabled", cwd=tmp_path, env=env)
        line = one_error_line(result)
        assert line == (f"error: data.text_paths: {notes} is a single document (no blank line between paragraphs) "
                        "and validation needs a whole document held out: add a second file to data.text_paths, "
                        "or put blank lines between its paragraphs")
        assert not list((tmp_path / "p" / "custom").glob(f"*{TEMP_SUFFIX}"))


@pytest.mark.parametrize(("phase", "signum"), [("data: training a", signal.SIGINT), ("data: tokenizing", signal.SIGINT),
                                               ("data: tokenizing", signal.SIGTERM)])
def test_ctrl_c_or_sigterm_during_preparation_is_one_line_and_leaves_no_temp_file(tmp_path, phase, signum):
    corpus = make_corpus(tmp_path / "corpus", files=16, lines=30000)  # ~30 MB: tens of seconds to prepare
    root = tmp_path / "prepared"
    env = {**fresh_machine_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(prepare_command(*prepare_args(corpus, root)), cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    for line in process.stdout:
        if line.startswith(phase):
            break
    deadline = time.time() + 60
    while phase == "data: tokenizing" and not list((root / "custom").glob(f"*{TEMP_SUFFIX}")) and time.time() < deadline:
        time.sleep(0.01)  # until tokens are being written: then there are temp files to remove
    assert process.poll() is None, "the preparation ended before the signal"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]  # 130 for Ctrl-C, 143 for SIGTERM
    said = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert stderr.strip() == f"{said}: nothing already prepared in {root}/custom was replaced: run again to prepare it"
    assert "data: prepared" not in stdout
    assert sorted(p.name for p in (root / "custom").iterdir()) == [".lock"]


def test_a_text_that_grows_while_it_is_prepared_is_one_line_and_replaces_nothing(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", files=2, lines=100000)  # ~10 MB: a few seconds to read three times
    root = tmp_path / "prepared"
    process = subprocess.Popen(prepare_command(*prepare_args(corpus, root)), cwd=tmp_path, text=True,
                               env={**fresh_machine_env(tmp_path), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout.readline().startswith("data: reading the corpus")  # after the inputs' fingerprint
    with open(corpus / "doc1.txt", "a", encoding="utf-8") as f:  # another program adds to a file being read
        f.write("\n\nlater lines " * 1000)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.strip().startswith("error: data.text_paths: "), stderr[-2000:]
    assert stderr.strip().endswith(" changed while it was being prepared: run again once it no longer changes; "
                                   "nothing already prepared was replaced")
    assert sorted(p.name for p in (root / "custom").iterdir()) == [".lock"]


MEMORY_TEXT_MB = 25


def peak_rss_mb(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run `command` to success; its peak resident memory in MB (its own, from wait4)."""
    with open(cwd / "stderr", "w+") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
        assert process.returncode == 0, (cwd / "stderr").read_text()[-2000:]
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_memory_while_preparing_does_not_grow_with_the_text(tmp_path):
    # the same kind of text, 1 MB and 25 MB, of few distinct words, so the BPE's own memory stays
    # small (it grows with the distinct words of its sample, up to data/prepare.py's BPE_SAMPLE_BYTES):
    # the old preparation, which held all the text and all its tokens at once, peaked 310 MB higher
    # on the larger (this one: 60-100 MB, an encode batch and the BPE's buffer)
    env = fresh_machine_env(tmp_path)
    peaks = {}
    for mb in (1, MEMORY_TEXT_MB):
        corpus = make_corpus(tmp_path / f"corpus{mb}", files=2, lines=10000 * mb, spaced=True)  # ~50 bytes a line
        assert sum(p.stat().st_size for p in corpus.iterdir()) > 0.8e6 * mb
        peaks[mb] = peak_rss_mb(prepare_command(*prepare_args(corpus, tmp_path / f"p{mb}")), tmp_path, env)
    assert peaks[MEMORY_TEXT_MB] - peaks[1] < 150, peaks
