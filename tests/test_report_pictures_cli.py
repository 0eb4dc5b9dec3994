"""The attention report's pictures drawn in a worker process while train.py trains on
(wandb.pictures=background), its charts carried through a resume, and the note that a fused
kernel's maps come from the explicit path: train.py and heads.report in child processes, on the
tiny corpus and model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, fresh_machine_env, make_tiny_corpus, run_entry, run_history, tiny_args


def chart_steps(run_dir, key: str) -> list[int]:
    """The steps of the latest line chart `key` (wandb.plot.line_series: a table of step, key, value)."""
    (row,) = [row for row in run_history(run_dir) if f"{key}_table.path" in row][-1:]
    table = json.loads((run_dir / "files" / row[f"{key}_table.path"]).read_text(encoding="utf-8"))
    step_column = table["columns"].index("step")
    return sorted({int(r[step_column]) for r in table["data"]})


def test_background_pictures_land_later_captioned_and_a_resumed_run_keeps_its_charts(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    out = tmp_path / "out"
    args = [*tiny_args(corpus, tmp_path / "prepared"), f"out_dir={out}", "wandb.attn_every=10",
            "train.eval_interval=10", "wandb.pictures=background", "wandb.ablation=off"]
    first = run_entry("train.py", *args, "train.max_iters=20", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "attention report at step 10 in" in first.stdout and "(pictures drawn in the background)" in first.stdout
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    images = [(row["_step"], row["attn_maps/text/L0.caption"], row["attn_report_step"])  # data=custom: one
              for row in run_history(run_dir) if "attn_maps/text/L0.caption" in row]    # probe, "text"
    assert (20, "report of step 20", 20) in images  # the final report's at the final step
    assert all(caption == f"report of step {shown}" for _, caption, shown in images)  # the step wandb steps them by
    # whenever drawing ends, each earlier report's pictures are logged at a later step or said to be
    # skipped, never both, never neither (logged at the final step, the final report's replaced them)
    for report in (0, 10):
        logged = [step for step, _, shown in images if shown == report]
        skipped = f"the attention pictures of step {report} were still" in first.stdout
        assert (len(logged) == 1 and logged[0] > report) != skipped, (report, images, first.stdout[-3000:])
    assert not list(tmp_path.glob("attention-pictures-*"))

    resumed = run_entry("train.py", *args, "train.max_iters=30", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    (second,) = set((out / "wandb").glob("offline-run-*")) - {run_dir}
    assert chart_steps(second, "attn_chart/entropy/text") == [0, 10, 20, 30]  # the first run's reports, then its own


def test_ctrl_c_while_a_picture_worker_starts_reaches_the_trainer_alone(tmp_path):
    # a terminal's Ctrl-C goes to the whole process group: the worker the step-0 report just started is still
    # importing train.py (a second or more), and it printed a KeyboardInterrupt traceback there
    corpus = make_tiny_corpus(tmp_path / "corpus")
    args = [*tiny_args(corpus, tmp_path / "prepared"), f"out_dir={tmp_path / 'out'}", "train.max_iters=500",
            "wandb.attn_every=100", "wandb.pictures=background", "wandb.ablation=off"]
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path,
                               env={**fresh_machine_env(tmp_path), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    for line in process.stdout:
        if line.startswith("attention report at step 0"):
            break
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "SIGINT: finishing this step, then saving" in stderr and "interrupted after step" in stdout


def test_a_fused_attention_run_says_once_that_its_maps_come_from_the_explicit_path(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    out = tmp_path / "out"
    note = "note: attention maps are computed with the explicit path (model.attn_impl=sdpa cannot return weights)"
    trained = run_entry("train.py", *tiny_args(corpus, tmp_path / "prepared"), f"out_dir={out}", "model.attn_impl=sdpa",
                        "train.max_iters=10", "wandb.attn_every=5", "wandb.ablation=off", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.count("attention report at step") == 3 and trained.stdout.count(note) == 1
    report = subprocess.run([sys.executable, "-m", "heads.report", f"out_dir={out}", "ablation_windows=0", "windows=1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.count(note) == 1
