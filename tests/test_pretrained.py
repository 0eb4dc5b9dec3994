"""Issue 18, in this process: the pieces that wire init_from into the entry points. Prepared data
is keyed by tokenizer (a model folder's tokenizer gets a folder of its own, the BPE keeps its own,
neither rebuilds the other); the shared loader of sample.py and heads.report gives a pretrained
GPT-2 with its tokenizer; train.py's pretrained_model takes the architecture from the checkpoint
and block_size, dropout, attn_impl and attn_tile from the model group; every refusal is one line. The tiny
GPT-2 folders are tests/conftest.py's make_tiny_gpt2: a BPE of the tiny corpus as vocab.json +
merges.txt and a GPT2LMHeadModel of its vocabulary, saved by transformers.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gpt2

from common.cli import run_entry
from common.errors import ConfigError
from common.settings import typed
from data.checkpoint import load_inference_model
from data.config import DataConfig
from data.gpt2 import PretrainedError, gpt2_tokenizer, load_gpt2
from data.prepare import prepare
from heads.config import HeadsConfig
from train import pretrained_model
from sample import SampleConfig
from trainer.config import RunConfig

pytest.importorskip("transformers", reason="writes the tiny GPT-2 folders (pip install -e .[test])")


@pytest.fixture
def tiny_gpt2(tmp_path, tiny_corpus) -> Path:
    return make_tiny_gpt2(tmp_path / "tiny-gpt2", tiny_corpus)


def data_config(corpus: Path, root: Path, tokenizer_kind: str = "bpe") -> DataConfig:
    return typed(DataConfig, {"name": "custom", "root": str(root), "text_paths": [str(corpus)], "vocab_size": 300,
                              "tokenizer_kind": tokenizer_kind}, "data.")


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_prepared_data_is_keyed_by_tokenizer_and_neither_folder_rebuilds_the_other(tmp_path, tiny_corpus, tiny_gpt2,
                                                                                   capsys):
    bpe, hf = data_config(tiny_corpus, tmp_path / "prepared"), data_config(tiny_corpus, tmp_path / "prepared", str(tiny_gpt2))
    assert bpe.dir == tmp_path / "prepared" / "custom"  # the BPE's folder is where it always was
    assert hf.dir.parent == bpe.dir.parent and hf.dir.name.startswith("custom-tiny-gpt2-")
    bpe_meta, hf_meta = prepare(bpe), prepare(hf)
    assert hf_meta["tokenizer_hash"] == gpt2_tokenizer(tiny_gpt2).hash != bpe_meta["tokenizer_hash"]
    assert bpe_meta["fingerprint"] != hf_meta["fingerprint"]
    before = {cfg.dir: stamps(cfg.dir) for cfg in (bpe, hf)}
    capsys.readouterr()
    for cfg in (bpe, hf, bpe):  # switching back and forth: each is up to date, nothing is written
        prepare(cfg)
    assert capsys.readouterr().out.count("is up to date") == 3
    assert {cfg.dir: stamps(cfg.dir) for cfg in (bpe, hf)} == before
    # another tokenizer in the same model folder is another identity: a folder of its own
    merges, prepared = tiny_gpt2 / "merges.txt", hf.dir
    lines = merges.read_text(encoding="utf-8").splitlines()
    merges.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert hf.dir == prepared  # hashed once: a run's config keeps the folder it started with
    following = data_config(tiny_corpus, tmp_path / "prepared", str(tiny_gpt2))  # the next run's
    assert following.dir != prepared and following.dir.name.startswith("custom-tiny-gpt2-")


def test_tokenizer_kind_takes_a_model_folder_and_refuses_anything_else_in_one_line(tmp_path, tiny_corpus):
    with pytest.raises(ConfigError) as error:
        data_config(tiny_corpus, tmp_path, str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"data.tokenizer_kind='{tmp_path / 'nowhere'}' must be one of "
                                                      "bpe, gpt2, cl100k_base, or a Hugging Face model folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedError, match="holds no tokenizer \\(vocab.json \\+ merges.txt, or tokenizer.json\\)"):
        prepare(data_config(tiny_corpus, tmp_path / "prepared", str(empty)))


@pytest.mark.parametrize("cls", [RunConfig, SampleConfig, HeadsConfig])
def test_init_from_is_a_hub_name_or_a_folder(tmp_path, cls):
    for good in ["gpt2", "gpt2-xl", str(tmp_path)]:
        assert typed(cls, {"init_from": good}, "").init_from == good
    with pytest.raises(ConfigError) as error:
        typed(cls, {"init_from": "/no/such/folder"}, "")
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("init_from='/no/such/folder' must be gpt2, gpt2-medium, gpt2-large, gpt2-xl or "
                                       "a folder in Hugging Face format")
    assert cls().init_from == ("scratch" if cls is RunConfig else None)


def run_config(tiny_corpus: Path, root: Path, init_from: str, **model) -> RunConfig:
    return typed(RunConfig, {"init_from": init_from, "model": {"n_layer": 6, "block_size": 32, "dropout": 0.1,
                                                               "attn_impl": "sdpa", "attn_tile": 16, "mlp": "relu2",
                                                               **model},
                             "data": dataclasses.asdict(data_config(tiny_corpus, root))}, "")


def test_pretrained_model_takes_the_checkpoints_architecture_and_four_model_settings(tmp_path, tiny_corpus,
                                                                                     tiny_gpt2, capsys):
    cfg = run_config(tiny_corpus, tmp_path / "prepared", str(tiny_gpt2))
    model = pretrained_model(cfg, verbose=True)
    config = model.config
    assert (config.n_layer, config.mlp, config.bias, config.vocab_size) == (2, "gelu_tanh", True, 300)  # the checkpoint's
    given = (config.block_size, config.dropout, config.attn_impl, config.attn_tile)
    assert given == (32, 0.1, "sdpa", 16)  # the model group's
    assert all(block.attn.attn_tile == 16 for block in model.blocks)
    assert cfg.data.tokenizer_kind == str(tiny_gpt2)  # the data is prepared with the model's tokenizer
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith(f"init_from={tiny_gpt2} ")
    assert "from the checkpoint vocab_size=300, n_layer=2, n_head=2, n_embd=32, bias=true" in line
    assert ("of the model group only model.block_size=32, model.dropout=0.1, model.attn_impl=sdpa, "
            "model.attn_tile=16 apply") in line
    reference, _ = load_gpt2(tiny_gpt2, block_size=32)
    idx = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(idx)[0], reference(idx)[0], atol=1e-5)


def test_pretrained_model_refusals_are_one_line(tmp_path, tiny_corpus, tiny_gpt2):
    with pytest.raises(PretrainedError) as error:
        pretrained_model(run_config(tiny_corpus, tmp_path, str(tiny_gpt2), block_size=128), verbose=False)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"model.block_size=128 is longer than {tiny_gpt2}/config.json's n_positions=64")
    cfg = run_config(tiny_corpus, tmp_path, str(tiny_gpt2))
    cfg.data.tokenizer_kind = "cl100k_base"
    with pytest.raises(ConfigError, match="both choose the tokenizer: leave data.tokenizer_kind out"):
        pretrained_model(cfg, verbose=False)


def test_the_shared_loader_gives_a_pretrained_model_with_its_tokenizer(tiny_gpt2, tmp_path):
    model, tokenizer, checkpoint = load_inference_model(tmp_path / "no-run", "cpu", "best", str(tiny_gpt2))
    assert checkpoint == {"init_from": str(tiny_gpt2), "step": None} and not model.training
    assert tokenizer.hash == gpt2_tokenizer(tiny_gpt2).hash and model.config.block_size == 64
    reference, _ = load_gpt2(tiny_gpt2)
    idx = torch.tensor([tokenizer.encode("the king and the queen 国王")])
    with torch.no_grad():
        assert torch.equal(model(idx)[0], reference(idx)[0])
    # a tokenizer one merge short of the model's vocabulary is refused by name
    vocab, merges = tiny_gpt2 / "vocab.json", tiny_gpt2 / "merges.txt"
    regular = {t: i for t, i in json.loads(vocab.read_text(encoding="utf-8")).items() if i < 298}  # 298, 299: the
    vocab.write_text(json.dumps({**regular, "<|endoftext|>": 298}), encoding="utf-8")  # last merge, <|endoftext|>
    merges.write_text("\n".join(merges.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(PretrainedError, match="has 299 tokens but its model's vocab_size is 300"):
        load_inference_model(tmp_path / "no-run", "cpu", "best", str(tiny_gpt2))


def test_a_pretrained_models_error_is_a_user_error_one_line_exit_2(capsys):
    def job():
        raise PretrainedError("could not download 'gpt2' from the Hugging Face hub (no network?): pass its folder")

    with pytest.raises(SystemExit) as stopped:
        run_entry(job)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: could not download 'gpt2' from the Hugging Face hub (no network?): " \
                                      "pass its folder\n"
