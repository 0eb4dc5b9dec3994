"""Every setting's type and range, checked once where it is defined (common/settings.py,
trainer/config.py, data/config.py): the converter's rules and the configs against the yaml files,
in this process. Bad values through the real entry points (one line, exit 2, nothing written) are
in tests/test_settings_cli.py."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from conftest import REPO, composed
from omegaconf import OmegaConf

from common.errors import ConfigError
from common.settings import setting, typed
from data.config import DataConfig
from heads.config import HeadsConfig
from model import GPT, GPTConfig
from sample import MIN_TEMPERATURE, SampleConfig
from trainer.config import RunConfig, TrainConfig, WandbConfig
from trainer.mfu import flops_per_token

# --- the converter ----------------------------------------------------------------------------


@dataclasses.dataclass
class Inner:
    rate: float = setting(0.5, above=0, below=1, fix="try 0.5")


@dataclasses.dataclass
class Example:
    count: int = setting(3, minimum=1)
    offset: int = setting(0, minimum=-5, maximum=5)
    rate: float = setting(1.0, minimum=0)
    flag: bool = setting(False)
    label: str = setting("a")
    kind: str = setting("x", choices=("x", "y"), fix="x or y")
    items: list[str] = setting(["one"])
    maybe: int | None = setting(None, minimum=1)
    folder: str = setting("out", path=True)
    even: int = setting(2, check=lambda n: None if n % 2 == 0 else "an even integer", fix="try 2")
    inner: Inner = setting(Inner())


def error(values: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        typed(Example, values, "ex.")
    return str(caught.value)


def test_values_of_the_right_type_are_converted():
    ex = typed(Example, {"count": 7, "rate": 2, "flag": True, "label": 12, "items": "solo", "maybe": 4,
                         "folder": "~/runs", "inner": {"rate": 0.25}}, "ex.")
    assert (ex.count, ex.rate, ex.flag, ex.label, ex.items, ex.maybe) == (7, 2.0, True, "12", ["solo"], 4)
    assert type(ex.rate) is float and ex.folder == os.path.expanduser("~/runs") and ex.inner.rate == 0.25
    assert typed(Example, {"label": False, "items": [1, True]}, "").label == "false"  # as typed, not "False"
    assert typed(Example, {"items": [1, True]}, "").items == ["1", "true"]


def test_missing_keys_keep_fresh_defaults():
    a, b = typed(Example, {}, ""), typed(Example, OmegaConf.create({}), "")
    assert a == Example() and a.items == ["one"] and a.items is not b.items and a.inner is not b.inner


def test_interpolations_are_resolved():
    node = OmegaConf.create({"count": 4, "offset": "${.count}"})
    assert typed(Example, node, "").offset == 4


@pytest.mark.parametrize("values,message", [
    ({"count": True}, "ex.count=true must be a positive integer: the default is ex.count=3"),
    ({"count": 1.5}, "ex.count=1.5 must be a positive integer"),
    ({"count": "7"}, "ex.count='7' must be a positive integer"),
    ({"count": 0}, "ex.count=0 must be a positive integer"),
    ({"offset": 6}, "ex.offset=6 must be an integer in [-5, 5]"),
    ({"rate": -1}, "ex.rate=-1 must be a number >= 0"),
    ({"rate": float("nan")}, "ex.rate=nan must be a finite number >= 0"),
    ({"rate": float("inf")}, "ex.rate=inf must be a finite number >= 0"),
    ({"rate": "fast"}, "ex.rate='fast' must be a number >= 0"),
    ({"rate": False}, "ex.rate=false must be a number >= 0"),
    ({"flag": "yes"}, "ex.flag='yes' must be true or false"),
    ({"flag": 1}, "ex.flag=1 must be true or false"),
    ({"label": None}, "ex.label=null must be a string"),
    ({"label": [1]}, "ex.label=[1] must be a string"),
    ({"kind": "z"}, "ex.kind='z' must be one of x, y: x or y"),
    ({"items": {"a": 1}}, "ex.items={a: 1} must be a list [a, b, ...]"),
    ({"items": ["ok", None]}, "ex.items[1]=null must be a string"),
    ({"maybe": 0}, "ex.maybe=0 must be a positive integer or null"),
    ({"folder": ""}, "ex.folder='' must be a non-empty path"),
    ({"folder": "  "}, "ex.folder='  ' must be a non-empty path"),
    ({"folder": "runs\nb"}, "ex.folder='runs\\nb' must be a path without line breaks, tabs or other control characters"),
    ({"even": 3}, "ex.even=3 must be an even integer: try 2"),
    ({"inner": {"rate": 1}}, "ex.inner.rate=1 must be a number in (0, 1): try 0.5"),
    ({"inner": 3}, "ex.inner=3 must be a group of settings"),
    ({"colour": "red"}, "ex.colour='red' is not a setting: the settings here are ex.count, ex.offset"),
    ({"inner": {"speed": 1}}, "ex.inner.speed=1 is not a setting: the settings here are ex.inner.rate"),
])
def test_each_rule_names_the_key_the_value_and_what_it_must_be(values, message):
    text = error(values)
    assert text.startswith(message) and "\n" not in text


def test_a_field_without_default_must_be_given():
    @dataclasses.dataclass
    class Needs:
        size: int = setting(minimum=1)

    with pytest.raises(ConfigError, match="^x.size is missing"):
        typed(Needs, {}, "x.")
    assert typed(Needs, {"size": 2}, "x.").size == 2


# --- the entry points' configs ----------------------------------------------------------------


CONFIGS = {"train": RunConfig, "sample": SampleConfig, "heads": HeadsConfig}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_file_starts_from_its_dataclass_defaults(name):
    """config/<name>.yaml composes to every field of its settings dataclass, at the dataclass default
    (the model group's at GPTConfig's, vocab_size aside): each default is stated once, in Python."""
    cfg = composed(name)
    assert set(OmegaConf.to_container(cfg)) == {f.name for f in dataclasses.fields(CONFIGS[name])}
    converted = dataclasses.asdict(typed(CONFIGS[name], cfg, ""))
    assert converted == dataclasses.asdict(CONFIGS[name]())
    if name == "train":
        model_defaults = dataclasses.asdict(GPTConfig())
        model_defaults.pop("vocab_size")  # the tokenizer's
        assert converted["model"] == model_defaults


def test_presets_recipes_and_the_custom_data_group_convert(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("text")
    run = typed(RunConfig, composed("train", "preset=cpu", "data=custom", f"data.text_paths={notes}",
                                    "train.resume=true"), "")
    assert run.train.optimizer == "muon" and run.train.lr_decay_iters == run.train.max_iters == 2000  # the fast recipe
    assert run.train.max_seconds == 420
    assert run.data.text_paths == [str(notes)]  # one plain string is one path, not one per character
    assert run.train.resume == "true"  # hydra's bool, as a string
    assert run.gpt_config(320).pos_encoding == "rope" and isinstance(run.data, DataConfig)
    assert isinstance(run.train, TrainConfig) and isinstance(run.wandb, WandbConfig)
    baseline = typed(RunConfig, composed("train", "preset=cpu", "recipe=baseline"), "")
    assert baseline.train.optimizer == "adamw" and baseline.gpt_config(320).pos_encoding == "learned"
    assert baseline.gpt_config(320).n_embd == run.gpt_config(320).n_embd == 256  # the preset's size either way
    assert typed(RunConfig, composed("train"), "").train.optimizer == "adamw"  # no preset: nanoGPT-style


def test_the_gpt2_preset_is_nanogpts_gpt2_small_in_shapes_parameters_and_flops():
    run = typed(RunConfig, composed("train", "preset=gpt2"), "")
    with torch.device("meta"):  # shapes without 500 MB of weights
        model = GPT(run.gpt_config(run.data.vocab_size))
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.attn_impl) == (12, 12, 768, 1024, "flash")
    assert model.wte.weight.shape == (50304, 768) and model.lm_head.weight is model.wte.weight  # tied, as GPT-2
    assert model.blocks[0].mlp.up.weight.shape == (3072, 768)
    assert model.num_params() == 123_587_328  # nanoGPT prints "123.59M" for its train_gpt2.py model
    # nanoGPT's estimate_mfu counts 6 N + 12 n_layer n_head head_dim T: the two MFUs compare
    assert flops_per_token(model) == 6 * 123_587_328 + 12 * 12 * 12 * 64 * 1024
    assert run.compiles("cuda") and not run.compiles("cpu")
    assert run.train.optimizer == "adamw" and run.data.dir.name == "bilingual-50k"  # preset=cpu's bins stay


def test_paths_expand_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes.txt").write_text("text")
    run = typed(RunConfig, composed("train", "out_dir='~/x'", "data.root='~/prepared'",
                                    "data.text_paths=['~/notes.txt']"), "")
    assert (run.out_dir, run.data.root, run.data.text_paths) == (f"{tmp_path}/x", f"{tmp_path}/prepared",
                                                                  [f"{tmp_path}/notes.txt"])
    assert typed(SampleConfig, composed("sample", "prompt_file='~/p.txt'"), "").prompt_file == f"{tmp_path}/p.txt"
    assert typed(HeadsConfig, composed("heads", "report_dir='~/r'"), "").report_dir == f"{tmp_path}/r"


def test_the_smallest_temperature_samples_without_overflow():
    import torch

    from model.generation import sample_next_token

    logits = torch.tensor([[1e8, 50.0, -1e8, 0.0]])  # far larger than a trained model's
    assert sample_next_token(logits, MIN_TEMPERATURE).item() == 0
    with pytest.raises(RuntimeError):  # what the check prevents: inf logits, NaN probabilities
        sample_next_token(torch.tensor([[100.0, 0.0]]), 1e-40)
    assert typed(SampleConfig, {"temperature": MIN_TEMPERATURE}, "").temperature == MIN_TEMPERATURE


@pytest.mark.parametrize("name,override,message", [
    ("train", "train.learning_rate=-1", "train.learning_rate=-1 must be a number > 0"),
    ("train", "train.beta1=1.5", "train.beta1=1.5 must be a number in [0, 1)"),
    ("train", "seed=-1", "seed=-1 must be an integer in [0, 4294967296)"),
    ("train", "data.val_fraction=0", "data.val_fraction=0 must be a number in (0, 1)"),
    ("train", "data.vocab_size=abc", "data.vocab_size='abc' must be an integer >= 258"),
    ("train", "train.max_seconds=-1", "train.max_seconds=-1 must be a number >= 0"),
    ("train", "out_dir=", "out_dir='' must be a non-empty path"),
    ("train", "wandb.probe_tokens=0", "wandb.probe_tokens=0 must be an integer >= 2"),
    ("train", "train.resume=maybe", "train.resume='maybe' must be auto, true or false"),
    ("train", "train.optimizer=sgd", "train.optimizer='sgd' must be one of adamw, muon"),
    ("train", "train.min_lr=nan", "train.min_lr=nan must be a finite number >= 0"),
    ("train", "train.overwrite=yes", "train.overwrite='yes' must be true or false"),
    ("train", "wandb.mode=on", "wandb.mode='on' must be one of auto, online, offline, disabled"),
    ("train", "data.sources=[shakespeare,wiki]", "data.sources[1]='wiki' must be one of shakespeare, peoples_daily"),
    ("train", "data.name=../elsewhere", "data.name='../elsewhere' must be a plain folder name"),
    ("train", "data.tokenizer_kind=gpt3", "data.tokenizer_kind='gpt3' must be one of bpe, gpt2, cl100k_base"),
    ("train", "data=custom", "data.sources=[] and data.text_paths=[] leave nothing to train on"),
    ("train", "data.text_paths=nowhere.txt", "data.text_paths=['nowhere.txt'] must be existing files or folders"),
    ("train", "data.text_paths=[a.txt,'']", "data.text_paths[1]='' must be a non-empty path"),
    ("train", "device=tpu", "device='tpu' must be one of auto, cpu, cuda, mps (or cuda:N)"),
    ("train", "dtype=int8", "dtype='int8' must be one of auto, float32"),
    ("train", "model.dropout=abc", "model.dropout='abc' must be a number in [0, 1)"),
    ("train", "model.bias=yes", "model.bias='yes' must be true or false"),
    ("train", "model.n_layer=true", "model.n_layer=true must be a positive integer"),
    ("train", "+model.vocab_size=5", "model.vocab_size=5 is not a setting: comes from the tokenizer"),
    ("train", "model.attn_impl=magic", "model.attn_impl='magic' must be one of"),
    ("train", "model.pos_encoding=alibi", "model.pos_encoding='alibi' must be one of"),
    ("train", "model.n_layer=0", "model.n_layer=0 must be a positive integer"),
    ("train", "model.n_embd=-32", "model.n_embd=-32 must be a positive integer"),
    ("train", "model.n_head=5", "model.n_embd=384 is not divisible by model.n_head=5"),
    ("train", "train.max_iters=0", "train.max_iters=0 must be a positive integer"),
    ("train", "train.batch_size=-8", "train.batch_size=-8 must be a positive integer"),
    ("train", "train.max_nonfinite=0", "train.max_nonfinite=0 must be a positive integer"),
    ("train", "wandb.pictures=later", "wandb.pictures='later' must be one of auto, inline, background, final"),
    ("sample", "temperature=1e-40", f"temperature=1e-40 must be 0 (greedy) or at least {MIN_TEMPERATURE:g}"),
    ("sample", "temperature=nan", "temperature=nan must be a finite number >= 0"),
    ("sample", "temperature=hot", "temperature='hot' must be a number >= 0"),
    ("sample", "top_k=1.5", "top_k=1.5 must be a positive integer or null"),
    ("sample", "top_k=0", "top_k=0 must be a positive integer or null"),
    ("sample", "temperature=-1", "temperature=-1 must be a number >= 0"),
    ("sample", "top_p=1.5", "top_p=1.5 must be a number in (0, 1] or null"),
    ("sample", "max_new_tokens=-3", "max_new_tokens=-3 must be"),
    ("sample", "format=xml", "format='xml' must be one of text, jsonl"),
    ("sample", "top_p=0", "top_p=0 must be a number in (0, 1] or null"),
    ("sample", "prompt=[]", "prompt=[] must be a string or a non-empty list of strings"),
    ("sample", "stream=true num_samples=2", "stream=true needs num_samples=1 (got 2)"),
    ("sample", "compile=true use_kv_cache=false", "compile=true compiles the KV-cache decoding step"),
    ("sample", "cuda_graph=true compile=true", "cuda_graph=true records the KV-cache decoding step"),
    ("sample", "cuda_graph=true use_kv_cache=false", "cuda_graph=true records the KV-cache decoding step"),
    ("sample", "cuda_graph=yes", "cuda_graph='yes' must be one of auto, true, false"),
    ("heads", f"report_dir={REPO / 'README.md'}", f"report_dir='{REPO / 'README.md'}' must be a folder, not an existing file"),
    ("heads", "probe_tokens=0", "probe_tokens=0 must be an integer >= 2"),
    ("train", "wandb.probes=[a]", "wandb.probes=['a'] must be texts of 2 characters or more (a probe needs 2 tokens"),
    ("heads", "probes=[ab,c]", "probes=['ab', 'c'] must be texts of 2 characters or more"),
])
def test_bad_settings_are_one_line_naming_the_key_and_value(name, override, message):
    with pytest.raises(ConfigError) as caught:
        typed(CONFIGS[name], composed(name, *override.split()), "")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_prompt_file_byte_order_mark_is_no_part_of_the_first_prompt(tmp_path):
    import sample

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffKING:\n\n国王\n".encode("utf-8"))
    assert sample.read_prompts(typed(SampleConfig, {"prompt_file": str(path)}, "")) == ["KING:", "国王"]
    assert sample.read_prompts(typed(SampleConfig, {"prompt": 2024}, "")) == ["2024"]


def test_a_prompt_file_that_is_a_folder_or_a_device_is_named_for_what_it_is_and_a_pipe_is_read(tmp_path):
    import threading

    import sample

    for path, what in [(tmp_path, "is a folder"), ("/dev/zero", "is a device, not a file"),
                       (tmp_path / "none.txt", "does not exist")]:
        with pytest.raises(ConfigError) as caught:
            sample.read_prompts(typed(SampleConfig, {"prompt_file": str(path)}, ""))
        assert str(caught.value) == f"prompt_file={path} {what}: give a UTF-8 text file, one prompt a line"
    fifo = tmp_path / "fifo"  # as prompt_file=/dev/stdin is under `echo ... | python sample.py`
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("KING:\n国王\n", encoding="utf-8"))
    writer.start()
    assert sample.read_prompts(typed(SampleConfig, {"prompt_file": str(fifo)}, "")) == ["KING:", "国王"]
    writer.join()


def test_a_report_dir_below_a_file_is_refused_before_the_checkpoint_is_read(tmp_path):
    from heads.report import check_report_dir

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        check_report_dir(a_file / "heads")
    assert str(caught.value).startswith(f"report_dir={a_file}/heads cannot be written ({a_file} is not a folder)")
    check_report_dir(tmp_path / "new" / "heads")  # made later, when the report is written
    assert not (tmp_path / "new").exists()


def test_streaming_into_jsonl_is_refused_since_it_would_break_the_json_lines():
    from sample import SampleConfig

    with pytest.raises(ConfigError, match="use stream=false with format=jsonl"):
        typed(SampleConfig, {"stream": True, "format": "jsonl"})


def test_a_train_config_built_by_hand_meets_the_same_rules_as_one_from_hydra():
    built = TrainConfig(learning_rate=3, beta1=0.5, optimizer="muon")
    assert built.learning_rate == 3.0 and isinstance(built.learning_rate, float)  # converted like typed() does
    with pytest.raises(ConfigError, match=r"^train.learning_rate=-1 must be a number > 0: the peak learning rate"):
        TrainConfig(learning_rate=-1)
    with pytest.raises(ConfigError, match=r"^train.optimizer='sgd' must be one of adamw, muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match=r"^train.batch_size=true must be a positive integer"):
        TrainConfig(batch_size=True)
