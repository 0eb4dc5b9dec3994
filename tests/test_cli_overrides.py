"""Issue 15 (item 4), in this process: hydra_argv quotes the unquoted non-ASCII values of a command
line, so UTF-8 values parse as the text typed. The entry points themselves (unquoted UTF-8 values,
a mistyped key or group option as one `error:` line) are in tests/test_cli_overrides_cli.py."""
from __future__ import annotations

from trainer.cli import hydra_argv


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
