"""Typed settings: every value of a hydra config is checked once, where its setting is defined.

The settings of each layer are dataclasses (model/config.py, data/config.py, heads/config.py,
trainer/config.py). A field's annotation is its type and `setting(...)` records its default, its
range, its choices and how to fix a bad value. `typed(cls, node, prefix)` turns the composed hydra config into that dataclass before any
work starts, so a bad value costs one line, not a traceback an hour later or a run that silently
does something else:

    error: train.learning_rate=-1 must be a number > 0: the peak learning rate, e.g. train.learning_rate=1e-3

The rules, by annotation:
    int          an int, not a bool (hydra reads `true` as a bool, and True == 1 in Python)
    float        an int or a float, finite; returned as a float
    bool         true or false
    str          any scalar, as text (`true` and `false` as typed, not "True")
    list[str]    a list of scalars, or one plain value as a one-item list
    dict         a group of settings, as a plain dict (checked by whoever reads it)
    X | None     null, or an X
    a dataclass  a group of settings, converted by the same rules with the group's prefix
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.device import DEVICES
from common.errors import ConfigError

T = TypeVar("T")
RULE = "setting"  # the dataclass field metadata key that holds a Rule


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting's value must be beyond its type. For a list, `choices` and `path` apply to
    each item and `check` to the whole list."""

    minimum: float | None = None  # value >= minimum
    maximum: float | None = None  # value <= maximum
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns what the value must be, or None when it is fine
    path: bool = False  # a file or folder: not empty, `~` expanded
    fix: str = ""  # how to fix a bad value; default: name the default value


def setting(default: Any = dataclasses.MISSING, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, choices: tuple | list | None = None,
            check: Callable[[Any], str | None] | None = None, path: bool = False, fix: str = "") -> Any:
    """A dataclass field with its checks: `x: float = setting(0.1, above=0, below=1, fix="...")`.

    A list, dict or dataclass default is copied for every instance (dataclasses refuse shared
    mutable defaults)."""
    rule = Rule(minimum, maximum, above, below, tuple(choices) if choices is not None else None, check, path, fix)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def typed(cls: type[T], node: Any, prefix: str = "") -> T:
    """The dataclass `cls` from a hydra/OmegaConf node or a dict, every field checked by its
    annotation and its `setting(...)` rule. `prefix` names the group in messages ("train.").
    Keys the node lacks keep the dataclass default; a key `cls` lacks is an error.
    Raises ConfigError: `<prefix><key>=<value> must be <what>: <fix>`."""
    values = plain(node, prefix)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}={show(values)} must be a group of settings (key: value): "
                          f"see the {cls.__name__} defaults in config/")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}={show(values[key])} is not a setting: "
                              f"the settings here are {', '.join(prefix + name for name in fields)}")
    converted = {}
    for name, f in fields.items():
        if name in values:
            rule = f.metadata.get(RULE, Rule())
            converted[name] = convert(values[name], hints[name], prefix + name, rule, f)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name} is missing: add it to the config or the command line")
    return cls(**converted)  # a __post_init__ checks settings that depend on each other


def check_fields(obj: Any, prefix: str) -> None:
    """Check and convert every field of the dataclass instance `obj` as `typed` does, so that one
    built by hand (`TrainConfig(learning_rate=3e-3)`) meets the same rules as one from hydra."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init:
            setattr(obj, f.name, convert(getattr(obj, f.name), hints[f.name], prefix + f.name, f.metadata.get(RULE, Rule()), f))


def setting_type(cls: type, key: str) -> tuple[Any, Any] | None:
    """(annotation, default) of the setting `key` (`train.learning_rate`) of the settings dataclass
    `cls`, or None when it has no such setting."""
    hint, default = cls, None
    for name in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(hint)} if dataclasses.is_dataclass(hint) else {}
        if name not in fields:
            return None
        hint, default = typing.get_type_hints(hint)[name], default_of(fields[name])
    return hint, default


def store_defaults(name: str, cls: type) -> None:
    """Hydra's config `name`: every setting of the dataclass `cls` at its default, as plain values.
    The config files then hold only what a group sets (presets, recipes, data), and each default
    lives once, in its setting(...). Plain, not a hydra structured config: OmegaConf's own type
    checks would answer a bad value with its own messages before typed() can say it in one line."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=dataclasses.asdict(cls()))


def setting_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of the settings dataclass `cls`: `train`, `train.batch_size`, `model.n_layer` (the
    keys of a dict setting such as the model's are its default's)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint, default = typing.get_type_hints(cls)[f.name], default_of(f)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hint):
            keys += setting_keys(hint, f"{prefix}{f.name}.")
        elif isinstance(default, dict):
            keys += [f"{prefix}{f.name}.{name}" for name in default]
    return keys


def plain(node: Any, prefix: str = "") -> Any:
    """Plain Python values from an OmegaConf node, interpolations (`${.max_iters}`) resolved."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} cannot be read: {str(e).splitlines()[0]}") from None


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


class Mismatch(Exception):
    """A value that does not fit its setting; `convert` turns it into the ConfigError line."""

    def __init__(self, key: str, value: Any, what: str):
        super().__init__(what)
        self.key, self.value, self.what = key, value, what


def convert(value: Any, hint: Any, key: str, rule: Rule, f: dataclasses.Field) -> Any:
    """`value` checked and converted for the field `f` annotated `hint`; ConfigError when it does not fit."""
    try:
        return check_value(value, hint, key, rule)
    except Mismatch as bad:
        fix = rule.fix or f"the default is {key}={show(default_of(f))}"
        raise ConfigError(f"{bad.key}={show(bad.value)} must be {bad.what}: {fix}") from None


def check_value(value: Any, hint: Any, key: str, rule: Rule) -> Any:
    if dataclasses.is_dataclass(hint):
        return typed(hint, value, key + ".")  # a nested group, e.g. train.* in the run config
    base, optional = unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise Mismatch(key, value, describe(base, rule, optional))
    origin = typing.get_origin(base) or base
    if origin is list:
        return check_list(value, base, key, rule, optional)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise Mismatch(key, value, "a group of settings (key: value)" + (" or null" if optional else ""))
        value = dict(value)
    elif base is not Any:
        value = scalar(value, base, key, rule, optional)
    if rule.check is not None:
        what = rule.check(value)
        if what:
            raise Mismatch(key, value, what)
    return value


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None` and Optional[X]; (hint, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def check_list(value: Any, hint: Any, key: str, rule: Rule, optional: bool) -> list:
    """A list, or one plain value as a one-item list (`data.text_paths=notes.txt` is one file,
    not nine one-letter paths; hydra reads `prompt=2024` as a number); each item checked by the
    item type, `choices` and `path`."""
    (item_hint,) = typing.get_args(hint) or (Any,)
    if isinstance(value, (str, int, float)):  # bool is an int
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Mismatch(key, value, f"a list [a, b, ...]{' or null' if optional else ''}")
    item_rule = dataclasses.replace(rule, check=None)
    items = [check_value(item, item_hint, f"{key}[{i}]", item_rule) for i, item in enumerate(value)]
    if rule.check is not None:
        what = rule.check(items)
        if what:
            raise Mismatch(key, items, what)
    return items


def scalar(value: Any, hint: Any, key: str, rule: Rule, optional: bool) -> Any:
    """int, float, bool or str by the rules in the module docstring, then choices, range and path.
    Messages show the value as given (-1, not the -1.0 it becomes)."""
    what, given = describe(hint, rule, optional), value
    if hint is bool:
        if not isinstance(value, bool):
            raise Mismatch(key, value, what)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Mismatch(key, value, what)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Mismatch(key, value, what)
        if not math.isfinite(value):
            raise Mismatch(key, value, what.replace("a number", "a finite number", 1))
        value = float(value)
    elif hint is str:
        if isinstance(value, bool):
            value = "true" if value else "false"  # hydra reads `resume=true` as a bool
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise Mismatch(key, value, what)
    else:
        raise TypeError(f"{key}: settings of type {hint!r} are not supported")  # a bug in a config dataclass
    if rule.choices is not None and value not in rule.choices:
        raise Mismatch(key, given, what)
    if not in_range(value, rule):
        raise Mismatch(key, given, what)
    if rule.path:
        if not value.strip():
            raise Mismatch(key, given, what)
        if not value.isprintable():  # a line break would split every line that names the path
            raise Mismatch(key, given, "a path without line breaks, tabs or other control characters")
        value = os.path.expanduser(value)  # `~/runs` means the home folder, not a folder named "~"
    return value


def in_range(value: Any, rule: Rule) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    return ((rule.minimum is None or value >= rule.minimum) and (rule.maximum is None or value <= rule.maximum)
            and (rule.above is None or value > rule.above) and (rule.below is None or value < rule.below))


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(hint: Any, rule: Rule, optional: bool = False) -> str:
    """What a value must be, in words: "a number > 0", "an integer in [0, 4294967296)", "one of a, b"."""
    if rule.choices is not None:
        what = "one of " + ", ".join(show_choice(c) for c in rule.choices)
    elif rule.path:
        what = "a non-empty path"
    elif hint is int and rule.minimum == 1 and rule.maximum is None and rule.below is None:
        what = "a positive integer"
    else:
        what = TYPE_WORDS.get(hint, "a list [a, b, ...]" if typing.get_origin(hint) is list else str(hint))
        bounds = range_words(rule)
        if bounds:
            what += " " + bounds
    if optional:
        what = "true, false or null" if hint is bool else what + " or null"
    return what


def range_words(rule: Rule) -> str:
    lower = (f"[{num(rule.minimum)}" if rule.minimum is not None else f"({num(rule.above)}" if rule.above is not None
             else None)
    upper = (f"{num(rule.maximum)}]" if rule.maximum is not None else f"{num(rule.below)})" if rule.below is not None
             else None)
    if lower and upper:
        return f"in {lower}, {upper}"
    if lower:
        return (">= " if lower[0] == "[" else "> ") + lower[1:]
    if upper:
        return ("<= " if upper[-1] == "]" else "< ") + upper[:-1]
    return ""


def num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def show_choice(choice: Any) -> str:
    return show(choice) if not isinstance(choice, str) else choice


def show(value: Any) -> str:
    """A value as it would be written on the command line: null, true, 'text', 1e-40, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # nan, inf, 1e-40
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------------------------
# settings several entry points share

# NumPy's global generator (seeded with the torch ones, see trainer.runtime.seed_everything) takes
# seeds in [0, 2**32); torch would take more, but one range for every entry point is simpler
SEED_LIMIT = 2**32
def device_rule(name: str) -> str | None:
    """auto, cpu, cuda, mps or cuda:N (whether it exists is resolve_device's business)."""
    if name in DEVICES or re.fullmatch(r"cuda:\d+", name):
        return None
    return f"one of {', '.join(DEVICES)} (or cuda:N)"


def not_blank(text: str) -> str | None:
    return "a non-empty name" if not text.strip() else None


def not_a_file(path: str) -> str | None:
    return "a folder, not an existing file" if os.path.isfile(path) else None


def seed_setting(default: int = 1337) -> Any:
    return setting(default, minimum=0, below=SEED_LIMIT, fix="any integer from 0 to 2**32 - 1, e.g. seed=1337")


def device_setting() -> Any:
    return setting("auto", check=device_rule, fix="device=auto picks CUDA, else MPS, else the CPU")
