"""The attention report's pictures drawn in a worker process while train.py trains on
(wandb.pictures=background), and its charts carried through a resume: train.py in a child process,
on the tiny corpus and model."""
from __future__ import annotations

import json

from conftest import (
    fresh_machine_env,
    make_tiny_corpus,
    run_entry,
    run_history,
    tiny_args,
)


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
    images = [(row["_step"], row["attn_maps/text/L0.caption"]) for row in run_history(run_dir)  # data=custom: one
              if "attn_maps/text/L0.caption" in row]                                               # probe, "text"
    assert (20, "report of step 20") in images  # the final report's at the final step
    assert len({step for step, _ in images}) == len(images)  # one report's per step: none replaced another
    for report in (0, 10):  # logged at a later step, or (drawing slower than the tiny steps) said to be skipped
        logged = [step for step, caption in images if caption == f"report of step {report}"]
        assert (logged and logged[0] > report) or f"the attention pictures of step {report} were still" in first.stdout
    assert not list(tmp_path.glob("attention-pictures-*"))

    resumed = run_entry("train.py", *args, "train.max_iters=30", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    (second,) = set((out / "wandb").glob("offline-run-*")) - {run_dir}
    assert chart_steps(second, "attn_chart/entropy/text") == [0, 10, 20, 30]  # the first run's reports, then its own
