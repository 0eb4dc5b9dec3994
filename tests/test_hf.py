"""Issue 18: the Hugging Face GPT-2 format (data/gpt2.py), against transformers as the reference.

Tiny GPT-2s with random weights (non-zero biases and LayerNorm parameters) load into our GPT with
GPT2LMHeadModel's fp32 logits; our recipes export to folders GPT2LMHeadModel loads with our
logits; tokenizers go both ways with the same ids as transformers'; every refusal is one line
naming the setting, tensor or model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import CHINESE, ENGLISH, GPT2_SHAPE, make_gpt2, small_tmpfs, write_gpt2_files

from data.gpt2 import GPT2_PATTERN, PretrainedError, export_gpt2, gpt2_tokenizer, load_gpt2, merges_of, resolve_gpt2
from data.tokenizer import SPLIT_PATTERN, train_bpe
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers", reason="the reference implementation (pip install -e .[test])")
transformers.logging.set_verbosity_error()  # its progress bars and notes are not the test's output

TOLERANCE = 1e-5  # fp32 logits: the same sums in another order
SHAPE = GPT2_SHAPE
VOCAB, POSITIONS = 300, 64
TEXTS = [
    "the king and the queen walk to the castle at night, don't they? It's 12345 miles.",
    "国王和王后在夜里走向城堡。中国人民 经济发展 2024年",
    "emoji 😀👍🏽 and\ttabs\r\n\n\n   trailing spaces   ",
    "  leading, MIXED case 3.14159 + 1,000,000 = ??!! 'quoted' we'll you've I'm",
    "\u00e9l\u00e8ve na\u00efve — caf\u00e9 🇨🇳 日本語テキスト",
]


def ids(seed: int = 1, vocab: int = VOCAB, length: int = 48) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def max_diff(theirs, ours: GPT, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return (theirs(idx).logits - ours(idx)[0]).abs().max().item()


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("settings,mlp", [
    ({}, "gelu_tanh"),  # gelu_new, GPT-2's
    ({"activation_function": "gelu_pytorch_tanh"}, "gelu_tanh"),
    ({"activation_function": "gelu"}, "gelu"),
    ({"tie_word_embeddings": False}, "gelu_tanh"),
])
def test_a_gpt2_loads_with_gpt2lmheadmodels_logits(tmp_path, settings, mlp):
    reference = make_gpt2(tmp_path, **settings)
    model, config = load_gpt2(str(tmp_path))
    assert (config.mlp, config.bias, config.pos_encoding, config.norm) == (mlp, True, "learned", "layernorm")
    assert config.tie_weights == settings.get("tie_word_embeddings", True)
    assert (model.lm_head.weight is model.wte.weight) == config.tie_weights
    assert max_diff(reference, model, ids()) <= TOLERANCE


def test_the_activation_matters_exact_gelu_misses_gpt2s_logits(tmp_path):
    reference = make_gpt2(tmp_path)
    model, _ = load_gpt2(tmp_path)
    for block in model.blocks:
        block.mlp.act = torch.nn.GELU()  # exact instead of tanh: what loading with the wrong activation gives
    assert max_diff(reference, model, ids()) > 100 * TOLERANCE


def test_pytorch_model_bin_loads_too_and_block_size_cuts_the_context(tmp_path):
    reference = make_gpt2(tmp_path, safetensors=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    model, config = load_gpt2(tmp_path, block_size=16, dropout=0.1)
    assert config.block_size == 16 and config.dropout == 0.1 and model.wpe.weight.shape == (16, 32)
    assert max_diff(reference, model.eval(), ids(length=16)) <= TOLERANCE


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("changes,culprit", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"n_inner": 64}, "n_inner=64"),
    ({"model_type": "llama"}, "'llama' model, not GPT-2"),
])
def test_what_our_gpt_cannot_express_is_refused_by_setting(tmp_path, changes, culprit):
    make_gpt2(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(PretrainedError) as error:
        load_gpt2(tmp_path)
    assert culprit in one_line(error) and "config.json" in str(error.value)


def test_a_missing_extra_or_misshapen_tensor_is_named_with_its_file(tmp_path):
    from safetensors.torch import load_file, save_file

    make_gpt2(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""
    cases = [
        ({k: v for k, v in tensors.items() if k != f"{prefix}h.1.mlp.c_fc.bias"}, "misses h.1.mlp.c_fc.bias"),
        ({**tensors, f"{prefix}h.0.attn.extra": torch.zeros(3)}, "has h.0.attn.extra"),
        ({**tensors, f"{prefix}h.0.attn.c_proj.weight": torch.zeros(32, 33)}, "h.0.attn.c_proj.weight has shape (32, 33)"),
    ]
    for damaged, culprit in cases:
        save_file(damaged, weights, metadata={"format": "pt"})
        with pytest.raises(PretrainedError) as error:
            load_gpt2(tmp_path)
        assert culprit in one_line(error) and str(weights) in str(error.value)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedError, match="model.safetensors cannot be read"):
        load_gpt2(tmp_path)


def test_causal_mask_buffers_of_old_checkpoints_are_ignored(tmp_path):
    from safetensors.torch import load_file, save_file

    reference = make_gpt2(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    for i in range(2):  # transformers < 4.3x wrote these buffers; the original gpt2 files hold them, unprefixed
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, POSITIONS, POSITIONS))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    model, _ = load_gpt2(tmp_path)
    assert max_diff(reference, model, ids()) <= TOLERANCE


def test_unknown_names_and_folders_without_weights_are_one_line(tmp_path):
    with pytest.raises(PretrainedError) as error:
        resolve_gpt2("gpt3")
    assert "'gpt3' is neither a folder nor a GPT-2 model" in one_line(error) and "gpt2-xl" in str(error.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PretrainedError) as error:
        resolve_gpt2(str(tmp_path))
    assert "holds no weights" in one_line(error)


def test_a_hub_model_offline_is_one_line_naming_the_model_and_the_fix_quickly(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # offline with an empty cache, whatever network this machine has: nothing is downloaded
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    started = time.perf_counter()
    with pytest.raises(PretrainedError) as error:
        resolve_gpt2("gpt2")  # what every caller does before load_gpt2(folder)
    assert time.perf_counter() - started < 5
    message = one_line(error)
    assert "could not download 'gpt2' from the Hugging Face hub" in message
    assert "hf download openai-community/gpt2" in message and "init_from=/path/to/gpt2" in message


# --- export -----------------------------------------------------------------------------------

RECIPES = {
    "default": {},  # bias=false: the biases are written as zeros
    "sinusoidal": {"pos_encoding": "sinusoidal"},  # written as the learned table it equals
    "gpt2-like": {"bias": True, "mlp": "gelu_tanh"},
    "untied": {"tie_weights": False, "bias": True},
}


def trained_like(settings: dict, seed: int = 0) -> GPT:
    """One of our GPTs with noisy weights everywhere (not the init's zeros), in eval mode."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=POSITIONS, dropout=0.0, **SHAPE, **settings)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_export_loads_in_gpt2lmheadmodel_with_our_logits(tmp_path, recipe):
    model = trained_like(RECIPES[recipe])
    export_gpt2(model, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(theirs, model, ids()) <= TOLERANCE
    back, config = load_gpt2(tmp_path / "hf")  # and back into ours: bias=true, learned positions
    assert config.tie_weights == model.config.tie_weights
    assert max_diff(theirs, back, ids()) <= TOLERANCE


@pytest.mark.parametrize("setting,value", [
    ("pos_encoding", "rope"), ("norm", "rmsnorm"), ("qk_norm", True), ("mlp", "relu2"), ("attn_score", "additive"),
])
def test_recipes_gpt2_cannot_express_are_refused_by_setting(tmp_path, setting, value):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=POSITIONS, **SHAPE, **{setting: value}))
    with pytest.raises(PretrainedError) as error:
        export_gpt2(model, tmp_path / "hf")
    shown = str(value).lower() if isinstance(value, bool) else value
    assert one_line(error).startswith(f"model.{setting}={shown} cannot be exported as GPT-2")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.iterdir())


def test_an_export_replaces_a_previous_one_but_never_another_folder(tmp_path):
    model = trained_like({})
    export_gpt2(model, tmp_path / "hf")
    export_gpt2(trained_like({}, seed=1), tmp_path / "hf")  # a previous export: replaced
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(theirs, trained_like({}, seed=1), ids()) <= TOLERANCE
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(PretrainedError) as error:
        export_gpt2(model, tmp_path / "notes")
    assert "is not a previous export" in one_line(error)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes"]  # no temp folder left behind


def test_a_failed_write_leaves_no_folder_that_looks_complete(tmp_path):
    with small_tmpfs(tmp_path / "disk", "256k") as disk:  # a real full disk: safetensors' own error, not an OSError
        export_gpt2(trained_like({}, seed=1), disk / "hf")  # a previous export, ~150 kB
        before = {p.name: p.read_bytes() for p in (disk / "hf").iterdir()}
        with pytest.raises(PretrainedError) as error:
            export_gpt2(trained_like({}), disk / "hf")  # its temp folder beside it does not fit
        assert one_line(error).startswith(f"cannot write {disk / 'hf'} (No space left on device): ")
        assert [p.name for p in disk.iterdir()] == ["hf"]  # no temp folder
        assert {p.name: p.read_bytes() for p in (disk / "hf").iterdir()} == before  # the previous export, whole


def test_a_folder_that_holds_only_a_tokenizer_is_no_previous_export(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tokenizer.json").write_text("{}")
    with pytest.raises(PretrainedError) as error:
        export_gpt2(trained_like({}), tmp_path / "mine")
    assert one_line(error).startswith(f"{tmp_path / 'mine'} exists and is not a previous export (it holds "
                                      "tokenizer.json): ")
    assert (tmp_path / "mine" / "tokenizer.json").read_text() == "{}"


# --- tokenizers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe():
    """A BPE trained on a small local bilingual text with digits, punctuation and emoji."""
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choice(ENGLISH) for _ in range(12)) + f", {rng.randint(0, 99999)}!" for _ in range(200)]
    lines += ["".join(rng.choice(CHINESE) for _ in range(10)) + "。😀" for _ in range(200)]
    return train_bpe(lines + TEXTS, 400)


def test_our_split_pattern_cuts_text_the_same_in_tokenizers_oniguruma(bpe):
    import regex
    from tokenizers import Regex, pre_tokenizers

    assert bpe.pattern == SPLIT_PATTERN  # possessive ?+ and ++ included: Oniguruma takes them as they are
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    for text in TEXTS:
        assert [piece for piece, _ in split.pre_tokenize_str(text)] == regex.findall(SPLIT_PATTERN, text)


def test_an_exported_tokenizer_gives_our_ids_in_autotokenizer(tmp_path, bpe):
    model = trained_like({})
    model = GPT(GPTConfig(**{**model.config.to_dict(), "vocab_size": bpe.vocab_size}))
    export_gpt2(model, tmp_path / "hf", bpe)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in TEXTS:
        ours = bpe.encode(text)
        assert theirs.encode(text) == ours, text
        assert theirs.decode(ours) == bpe.decode(ours) == text
    assert theirs.eos_token_id == bpe.eot_id == json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"]
    assert gpt2_tokenizer(tmp_path / "hf").hash == bpe.hash  # and back from tokenizer.json: the same tokenizer


def test_the_merges_rebuild_every_token_in_rank_order(bpe):
    merges = merges_of(bpe)
    assert len(merges) == len(bpe.ranks) - 256
    assert [a + b for a, b in merges] == [token for token in bpe.ranks if len(token) > 1]


def test_a_gpt2_vocab_and_merges_give_gpt2tokenizers_ids(tmp_path, bpe):
    import tiktoken_ext.openai_public

    assert GPT2_PATTERN == tiktoken_ext.openai_public.r50k_pat_str  # tiktoken's "gpt2" cuts text this way
    write_gpt2_files(tmp_path / "gpt2", bpe)
    ours = gpt2_tokenizer(tmp_path / "gpt2")
    assert (ours.name, ours.pattern, ours.eot_id, ours.vocab_size) == ("gpt2", GPT2_PATTERN, 400 - 1, 400)
    theirs = transformers.GPT2Tokenizer(str(tmp_path / "gpt2" / "vocab.json"), str(tmp_path / "gpt2" / "merges.txt"))
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text)) == text


def test_a_vocab_whose_ids_do_not_follow_the_merges_is_refused(tmp_path, bpe):
    write_gpt2_files(tmp_path / "gpt2", bpe)
    merges = tmp_path / "gpt2" / "merges.txt"
    lines = merges.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    merges.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(PretrainedError) as error:
        gpt2_tokenizer(tmp_path / "gpt2")
    assert "merge 2 (" in one_line(error) and "ids must follow the merge order" in str(error.value)
