"""The command line, in this process: hydra_argv quotes the unquoted non-ASCII values of a command
line (issue 15) and takes a string setting as the text typed (issue 26), so values parse as typed;
check_overrides and check_utf8 name what hydra cannot take in one line. The entry points themselves
(unquoted UTF-8 and punctuation, a mistyped key or group option as one `error:` line) are in
tests/test_cli_overrides_cli.py."""
from __future__ import annotations

import pytest

from common.cli import hydra_argv


def test_hydra_argv_quotes_only_unquoted_non_ascii_elements() -> None:
    ascii_args = ["-m", "--cfg", "job", "model.n_layer=3", "prompt=[a,'b c']", "x=a,b", "+k=v", "~k", "a=${b}"]
    assert hydra_argv(ascii_args) == ascii_args
    assert hydra_argv(["prompt=人民日报"]) == ["prompt='人民日报'"]
    assert hydra_argv(["prompt=[文本.txt,b.txt, 'é']"]) == ["prompt=['文本.txt',b.txt, 'é']"]
    assert hydra_argv(["prompt=中国,b,héllo"]) == ["prompt='中国',b,'héllo'"]  # a sweep stays a sweep
    assert hydra_argv(["prompt='中国'", 'prompt="中国"']) == ["prompt='中国'", 'prompt="中国"']
    assert hydra_argv(["prompt=l'été"]) == ["prompt='l\\'été'"]
    assert hydra_argv(["prompt=中\\,国\\"]) == ["prompt='中,国\\\\'"]  # hydra escapes become plain text
    assert hydra_argv(["prompt=[[中], {k: 国}]", "p=choice(中,b)"]) == ["prompt=[['中'], {k: '国'}]",
                                                                        "p=choice('中',b)"]
    assert hydra_argv(["--config-name=中"]) == ["--config-name=中"]


def test_hydra_argv_values_parse_as_the_text_typed() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    typed = {"人民日报": "人民日报", "l'été": "l'été", "a\\'b中": "a\\'b中", "中\\": "中\\", "中 国": "中 国",
             "\\\\中\\,'": "\\中,'", "[中, é]": ["中", "é"]}
    for value, text in typed.items():
        [override] = parser.parse_overrides(hydra_argv([f"prompt={value}"]))
        assert override.value() == text, (value, hydra_argv([f"prompt={value}"]))


# --- issue 26: a string setting takes the text typed ---------------------------------------------

def sample_text(key: str) -> bool:
    from common.cli import text_setting
    from sample import SampleConfig

    return text_setting(SampleConfig, key)


def parsed_value(arg: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [override] = OverridesParser.create().parse_overrides([arg])
    return override.value()


def test_a_string_setting_is_the_text_typed_commas_and_punctuation_included() -> None:
    texts = ["To be, or not to be", "Hello!", "What's", "中国,人民", "~/runs/a", "#1 (a=b): [x]", " lead", "", "1e-3",
             "a\tb"]
    for text in texts:
        [arg] = hydra_argv([f"prompt={text}"], sample_text)
        assert parsed_value(arg) == text, (text, arg)
    assert parsed_value(hydra_argv(["prompt=[Hello!, What's]"], sample_text)[0]) == ["Hello!", "What's"]
    for kept in ["prompt=null", "prompt=${oc.env:HOME}", "prompt='a, b'", "top_k=5", "seed=1,2"]:
        assert hydra_argv([kept], sample_text) == [kept]  # null, interpolations, quoted text, other settings


def test_in_a_sweep_commas_separate_points_each_the_text_typed() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = hydra_argv(["-m", "prompt=Hello!,What's,plain", "out_dir=runs/a-1,b"], sample_text)
    assert argv[2] == "out_dir=runs/a-1,b"  # plain points keep plain names (their sweep folders)
    points = [list(o.sweep_string_iterator()) for o in OverridesParser.create().parse_overrides(argv[1:])]
    assert [parsed_value(f"k={p}") for p in points[0]] == ["Hello!", "What's", "plain"]


def test_deleting_a_null_setting_is_setting_its_default() -> None:
    from common.cli import null_deletion
    from trainer.config import RunConfig

    assert null_deletion("~wandb.name", RunConfig) == "wandb.name=null"
    assert null_deletion("~seed", RunConfig) == "~seed"  # hydra deletes a value; typed() then takes the default
    assert null_deletion("~nothing", RunConfig) == "~nothing"  # check_overrides names an unknown key


def test_a_byte_that_is_not_utf8_is_one_line_naming_it() -> None:
    from common.cli import check_utf8
    from common.errors import ConfigError

    check_utf8("out_dir=/tmp/café")
    with pytest.raises(ConfigError) as error:
        check_utf8("out_dir=/tmp/caf\udce9")  # how Python keeps the byte 0xe9 of argv
    assert str(error.value).startswith("out_dir=/tmp/caf\\xe9 is not UTF-8 text (byte 0xe9): ")


@pytest.mark.parametrize(("args", "expected"), [
    (["model.n_layer=3!"], "model.n_layer=3! cannot be read (hydra's override grammar"),
    (["model.n_layer=2,4"], "model.n_layer=2,4 gives several values: add -m to run one job for each (python train.py -m"),
    (["~model.n_layr"], "model.n_layr is not a setting: did you mean model.n_layer?"),
])
def test_an_override_hydra_cannot_take_is_one_line(args: list[str], expected: str) -> None:
    from common.cli import check_overrides
    from trainer.config import RunConfig
    from common.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        check_overrides(args, "train", "python train.py", RunConfig)
    assert str(error.value).startswith(expected)
    check_overrides(["-m", "model.n_layer=2,4"], "train", "python train.py", RunConfig)  # a sweep is fine with -m
