"""heads/plots.py's Painter and heads/metrics.py's ReportHistory: the report's pictures drawn in
place or in a worker process (same PNGs, Ctrl-C-proof, failures reported, files cleaned up), and the
report history a checkpoint carries and charts against chance."""
from __future__ import annotations

import errno
import os
import signal
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_tmpfs
from matplotlib.figure import Figure

from heads.metrics import Evidence, ReportHistory
from heads.plots import Painter, layer_figure, metric_figure


def pictures() -> dict:
    weights = np.random.default_rng(0).dirichlet(np.ones(6), size=(2, 6))  # (n_head, T, T)
    labels = ["The", " cat", " 中", "国", " sat", "."]
    return {"attn_maps/en/L0": partial(layer_figure, weights, labels, "en · layer 0"),
            "attn_metrics/entropy/zh": partial(metric_figure, np.full((2, 2), 0.5), "entropy", vmin=0.0, vmax=1.0,
                                               baseline=1.0)}


def figure_noting_its_process(folder: Path, seconds: float = 0.0) -> Figure:
    """A picture that writes the id of the process drawing it (and takes `seconds`)."""
    (folder / "pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    return Figure(figsize=(1, 1))


def broken_figure() -> Figure:
    raise OSError(28, "No space left on device")


def collect(painter: Painter, wait: bool = True) -> list:
    return [(step, {k: v.read_bytes() for k, v in files.items()} if isinstance(files, dict) else files)
            for step, files in painter.ready(wait)]


def test_a_worker_process_draws_the_same_pngs_as_drawing_in_place(tmp_path):
    inline, background = Painter(background=False), Painter(background=True)
    try:
        inline.submit(5, pictures())
        background.submit(5, pictures() | {"probe": partial(figure_noting_its_process, tmp_path)})
        (drawn_here,) = collect(inline)
        (drawn_there,) = collect(background)
    finally:
        inline.close()
        background.close()
    assert drawn_here[0] == drawn_there[0] == 5
    for key in pictures():
        assert drawn_here[1][key] == drawn_there[1][key] and drawn_here[1][key].startswith(b"\x89PNG")
    assert int((tmp_path / "pid").read_text()) != os.getpid()  # another process drew them


def test_pictures_are_collected_only_when_drawn_unless_waited_for(tmp_path):
    painter = Painter(background=True)
    try:
        painter.submit(0, {"slow": partial(figure_noting_its_process, tmp_path, 1.0)})
        assert collect(painter, wait=False) == []  # training goes on meanwhile
        ((step, files),) = collect(painter, wait=True)
        assert step == 0 and set(files) == {"slow"}
    finally:
        painter.close()


def figure_waiting_for_another_process(folder: Path, name: str) -> Figure:
    """A picture that notes its process and returns only once a second process has noted its own:
    drawn one after the other, the first never returns (the test fails on its timeout instead)."""
    (folder / f"{name}.pid").write_text(str(os.getpid()))
    deadline = time.time() + 60
    while len({f.read_text() for f in folder.glob("*.pid")}) < 2:
        if time.time() > deadline:
            raise TimeoutError("no second process drew a picture at the same time")
        time.sleep(0.05)
    return Figure(figsize=(1, 1))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="spreading needs two cores")
def test_the_final_reports_pictures_are_drawn_by_several_processes_at_once(tmp_path):
    painter = Painter(background=True)
    try:
        painter.submit(9, {f"p{i}": partial(figure_waiting_for_another_process, tmp_path, f"p{i}") for i in range(4)},
                       spread=True)
        ((step, files),) = collect(painter)
    finally:
        painter.close()
    assert step == 9 and isinstance(files, dict) and set(files) == {"p0", "p1", "p2", "p3"}
    assert os.getpid() not in {int(f.read_text()) for f in tmp_path.glob("*.pid")}


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")
def test_ctrl_c_reaches_the_worker_without_losing_its_pictures(tmp_path):
    painter = Painter(background=True)
    try:
        painter.submit(0, {"slow": partial(figure_noting_its_process, tmp_path, 1.0)})
        deadline = time.time() + 60
        while not (tmp_path / "pid").exists() and time.time() < deadline:  # the worker is drawing...
            time.sleep(0.05)
        workers = list(painter.pool._processes)  # noqa: SLF001 - the test needs the worker's pid
        os.kill(workers[0], signal.SIGINT)  # ...as a Ctrl-C in the terminal would reach it too
        ((step, files),) = collect(painter)
        assert step == 0 and isinstance(files, dict), files
    finally:
        painter.close()


@pytest.mark.parametrize("background", [False, True])
def test_a_picture_that_cannot_be_drawn_is_reported_not_raised(background):
    painter = Painter(background)
    try:
        painter.submit(3, {"broken": broken_figure})
        painter.submit(4, pictures())
        (step, error), (later, files) = collect(painter)
    finally:
        painter.close()
    assert step == 3 and isinstance(error, OSError) and "No space left" in str(error)
    assert later == 4 and set(files) == set(pictures())  # the next report still draws


def test_a_full_disk_under_the_pictures_is_reported_and_the_next_report_draws_again(tmp_path, monkeypatch):
    with small_tmpfs(tmp_path / "tmp", "12k") as tiny:
        monkeypatch.setattr(tempfile, "tempdir", str(tiny))  # where the painter keeps its PNGs
        painter = Painter(background=False)
        painter.submit(0, pictures())  # PNGs of ~15 and ~7 KB: not both fit
        ((step, error),) = painter.ready()
        assert step == 0 and isinstance(error, OSError) and error.errno == errno.ENOSPC
        painter.release(0)  # what was written is removed...
        painter.submit(1, {"attn_metrics/entropy/zh": pictures()["attn_metrics/entropy/zh"]})
        ((step, files),) = painter.ready()  # ...so the next report's pictures fit
        assert step == 1 and files["attn_metrics/entropy/zh"].read_bytes().startswith(b"\x89PNG")
        painter.close()
        assert list(tiny.iterdir()) == []


def test_a_killed_worker_loses_its_pictures_and_the_next_are_drawn_in_place(tmp_path, capsys):
    painter = Painter(background=True)
    try:
        painter.submit(0, {"slow": partial(figure_noting_its_process, tmp_path, 30.0)})
        deadline = time.time() + 60
        while not (tmp_path / "pid").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)  # as the out-of-memory killer would
        ((step, error),) = painter.ready(wait=True)
        assert step == 0 and isinstance(error, BrokenProcessPool)
        painter.submit(1, pictures())
        assert "drawn in this process from now on" in capsys.readouterr().err
        ((step, files),) = painter.ready()
        assert step == 1 and set(files) == set(pictures())
    finally:
        painter.close()


def test_ready_takes_the_oldest_first_and_files_stay_until_released():
    painter = Painter(background=False)
    painter.submit(1, pictures())
    painter.submit(2, pictures())
    ((step, files),) = painter.ready(limit=1)
    assert step == 1 and all(path.is_file() for path in files.values())  # there while the caller logs them
    painter.release(1)
    assert not any(path.exists() for path in files.values())
    assert [step for step, _ in painter.ready()] == [2]
    painter.close()
    assert not painter.folder.exists()


def evidence(value: float) -> Evidence:
    values = {"entropy": {"en": np.full((2, 2), value), "zh": np.full((2, 2), value / 2)}}
    return Evidence(values=values, chance={"entropy": {"en": 1.0, "zh": 1.0}}, windows={"en": 4, "zh": 4})


def test_report_history_survives_a_checkpoint_round_trip(tmp_path):
    history = ReportHistory()
    history.add(0, evidence(0.9))
    history.add(250, evidence(0.4))
    torch.save({"report_history": history.state()}, tmp_path / "ckpt.pt")
    restored = ReportHistory(torch.load(tmp_path / "ckpt.pt", weights_only=True)["report_history"])
    restored.add(500, evidence(0.2))
    assert restored.steps == [0, 250, 500]
    assert [float(v["entropy"]["zh"][1, 1]) for v in restored.values] == pytest.approx([0.45, 0.2, 0.1])


def test_each_metric_chart_draws_chance_as_a_flat_line_beside_the_heads():
    history = ReportHistory()
    for step, value in ((0, 0.9), (250, 0.4)):
        history.add(step, evidence(value))
    chart = history.charts(evidence(0.4))["attn_chart/entropy/zh"]
    lines: dict[str, list] = {}
    for step, line, value in chart.table.data:  # what wandb draws: a line per lineKey, step across
        lines.setdefault(line, []).append((step, value))
    assert list(lines) == ["L0H0", "L0H1", "L1H0", "L1H1", "chance"]
    assert lines["chance"] == [(0, 1.0), (250, 1.0)]
    assert lines["L1H1"] == [(0, pytest.approx(0.45)), (250, pytest.approx(0.2))]
