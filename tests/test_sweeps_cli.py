"""Hydra sweeps (`python train.py -m ...`): every job trains in its own out_dir under its own wandb
name, and nothing lands in the working directory."""
from __future__ import annotations

from conftest import TINY, fresh_machine_env, make_tiny_corpus, run_entry

from data.checkpoint import load_checkpoint


def test_a_two_point_sweep_trains_both_points_each_in_its_own_out_dir(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    result = run_entry("train.py", "-m", *TINY, "data=custom", f"data.text_paths=[{corpus}]",
                       f"data.root={tmp_path / 'prepared'}", f"out_dir={out}", "train.max_iters=10",
                       "train.eval_interval=10", "model.n_layer=1,2", "wandb.mode=offline", "wandb.attn_every=0",
                       cwd=cwd, env=fresh_machine_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stdout
    for n_layer in (1, 2):
        folder = out / f"model.n_layer={n_layer}"
        checkpoint = load_checkpoint(folder)
        assert checkpoint["step"] == 10 and checkpoint["model_config"]["n_layer"] == n_layer
        assert len(list((folder / "wandb").glob("offline-run-*"))) == 1  # one wandb run per job
        assert f"checkpoint in {folder / 'ckpt.pt'}" in result.stdout
        assert checkpoint["config"]["wandb"]["name"] == f"model.n_layer={n_layer}"
    assert sorted(p.name for p in out.iterdir()) == ["model.n_layer=1", "model.n_layer=2", "multirun.yaml"]
    assert list(cwd.iterdir()) == []  # no multirun/ folder, no outputs/


def test_a_sweep_whose_folder_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_entry("train.py", "-m", *TINY, f"out_dir={blocker / 'sweep'}", "model.n_layer=1,2", cwd=tmp_path,
                       env=fresh_machine_env(tmp_path))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: out_dir={blocker / 'sweep'} is not a writable folder (Not a directory): choose another out_dir or fix "
        "its permissions"), result.stderr[-2000:]


def test_a_sweep_that_stops_at_a_middle_point_names_the_points_that_did_not_run(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    out, env = tmp_path / "out", fresh_machine_env(tmp_path)
    result = run_entry("train.py", "-m", *TINY, "data=custom", f"data.text_paths=[{corpus}]",
                       f"data.root={tmp_path / 'prepared'}", f"out_dir={out}", "train.max_iters=2", "wandb.mode=disabled",
                       "model.n_head=2,3,4", cwd=tmp_path, env=env)  # n_embd=32 is not a multiple of 3
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: model.n_embd=32 is not divisible by model.n_head=3: pick n_embd as a multiple of n_head (head_dim = "
        "n_embd / n_head); the sweep stopped at point 2 of 3 (model.n_head=3): model.n_head=4 did not run")
    assert sorted(p.name for p in out.iterdir()) == ["model.n_head=2", "multirun.yaml"]
    # sample.py sweeps too (strings with punctuation, one per point), writing nothing beside the checkpoints
    run = out / "model.n_head=2"
    before = sorted(p.name for p in run.iterdir())
    sampled = run_entry("sample.py", "-m", f"out_dir={run}", "prompt=Hello!,What's", "seed=1,2", "max_new_tokens=2",
                        "device=cpu", cwd=tmp_path, env=env)
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert [line for line in sampled.stdout.splitlines() if line.startswith("---")] == [
        "--- sample 1/1 (prompt 'Hello!') ---", "--- sample 1/1 (prompt 'Hello!') ---",
        "--- sample 1/1 (prompt \"What's\") ---", "--- sample 1/1 (prompt \"What's\") ---"]
    assert sorted(p.name for p in run.iterdir()) == before  # no multirun.yaml
