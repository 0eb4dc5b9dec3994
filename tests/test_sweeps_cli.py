"""Hydra sweeps (`python train.py -m ...`): every job trains in its own out_dir under its own wandb
name, and nothing lands in the working directory."""
from __future__ import annotations

from conftest import TINY, fresh_machine_env, make_tiny_corpus, run_entry
from trainer.checkpoint import load_checkpoint


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
