"""Typed settings: every value of a hydra config is checked once, where its setting is defined.

Each layer's settings are a dataclass (model/, data/, heads/, trainer/config.py): a field's annotation
is its type and `setting(...)` its default, range, choices and fix. `typed(cls, node, prefix)` turns the
composed hydra config into that dataclass before any work starts, so a bad value costs one line, not a
traceback an hour later or a run that silently does something else:

    error: train.learning_rate=-1 must be a number > 0: the peak learning rate, e.g. train.learning_rate=1e-3
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.device import device_rule
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
    choices: tuple | list | None = None
    check: Callable[[Any], str | None] | None = None  # returns what the value must be, or None when it is fine
    path: bool = False  # a file or folder: not empty, `~` expanded
    fix: str = ""  # how to fix a bad value; default: name the default value


def setting(default: Any = dataclasses.MISSING, **checks: Any) -> Any:
    """A dataclass field with its Rule: `x: float = setting(0.1, above=0, below=1, fix="...")`."""
    metadata = {RULE: Rule(**checks)}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):  # a fresh copy for each instance
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def typed(cls: type[T], node: Any, prefix: str = "") -> T:
    """The dataclass `cls` from a hydra node or a dict, each field checked; `prefix` ("train.") names
    the group in the one-line ConfigError. Keys the node lacks keep their default."""
    values, group = node, prefix.rstrip(".")
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            values = OmegaConf.to_container(node, resolve=True)  # interpolations (`${.max_iters}`) resolved
        except OmegaConfBaseException as e:
            raise ConfigError(f"{group or 'the config'} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{group}={show(values)} must be a group of settings (key: value): "
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
            converted[name] = convert(values[name], hints[name], prefix + name, f)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name} is missing: add it to the config or the command line")
    return cls(**converted)  # a __post_init__ checks settings that depend on each other


def check_fields(obj: Any, prefix: str) -> None:
    """Convert every field of `obj` as typed() does: one built by hand meets the same rules as one from hydra."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init:
            setattr(obj, f.name, convert(getattr(obj, f.name), hints[f.name], prefix + f.name, f))


def setting_type(cls: type, key: str) -> tuple[Any, Any] | None:
    """(annotation, default) of the setting `key` (`train.learning_rate`) of `cls`, or None when there is none."""
    hint, default = cls, None
    for name in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(hint)} if dataclasses.is_dataclass(hint) else {}
        if name not in fields:
            return None
        hint, default = typing.get_type_hints(hint)[name], default_of(fields[name])
    return hint, default


def store_defaults(name: str, cls: type) -> None:
    """Hydra's config `name`: every setting of `cls` at its default, so each default lives once, in its
    setting(...). Plain values, not a hydra structured config: OmegaConf's own type checks would answer
    a bad value with its own messages before typed() can say it in one line."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=dataclasses.asdict(cls()))


def setting_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of `cls`: `train`, `train.batch_size`, `model.n_layer` (a dict setting's keys are its default's)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint, default = typing.get_type_hints(cls)[f.name], default_of(f)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hint):
            keys += setting_keys(hint, f"{prefix}{f.name}.")
        elif isinstance(default, dict):
            keys += [f"{prefix}{f.name}.{name}" for name in default]
    return keys


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


class Mismatch(Exception):
    """(key, value, what it must be) of a value that does not fit; convert() adds the fix."""


def convert(value: Any, hint: Any, key: str, f: dataclasses.Field) -> Any:
    """`value` checked and converted for the field `f`; a ConfigError line when it does not fit."""
    rule = f.metadata.get(RULE, Rule())
    try:
        return check_value(value, hint, key, rule)
    except Mismatch as bad:
        bad_key, bad_value, what = bad.args
        fix = rule.fix or f"the default is {key}={show(default_of(f))}"
        raise ConfigError(f"{bad_key}={show(bad_value)} must be {what}: {fix}") from None


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
        value = check_list(value, base, key, rule, optional)
    elif origin is dict:
        if not isinstance(value, Mapping):
            raise Mismatch(key, value, "a group of settings (key: value)" + (" or null" if optional else ""))
        value = dict(value)
    elif base is not Any:
        value = scalar(value, base, key, rule, optional)
    what = rule.check(value) if rule.check is not None else None
    if what:
        raise Mismatch(key, value, what)
    return value


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None` and Optional[X]; (hint, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True  # one type left: None was the other
    return hint, False


def check_list(value: Any, hint: Any, key: str, rule: Rule, optional: bool) -> list:
    """A list, each item checked by the item type, `choices` and `path` (`check` is the whole list's)."""
    (item_hint,) = typing.get_args(hint) or (Any,)
    # one plain value is a one-item list: `data.text_paths=notes.txt` is one file, not nine one-letter
    # paths, and hydra reads `prompt=2024` as a number
    if isinstance(value, (str, int, float)):  # bool is an int
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Mismatch(key, value, f"a list [a, b, ...]{' or null' if optional else ''}")
    item_rule = dataclasses.replace(rule, check=None)
    return [check_value(item, item_hint, f"{key}[{i}]", item_rule) for i, item in enumerate(value)]


SCALAR_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str, bool, int, float)}


def scalar(value: Any, hint: Any, key: str, rule: Rule, optional: bool) -> Any:
    """An int, float, bool or str setting, then its choices, range and path. Messages show the value
    as given (-1, not the -1.0 it becomes)."""
    if hint not in SCALAR_TYPES:
        raise TypeError(f"{key}: settings of type {hint!r} are not supported")  # a bug in a config dataclass
    what, given = describe(hint, rule, optional), value
    # hydra reads `true` as a bool, and True == 1 in Python: a bool is no number
    if not isinstance(value, SCALAR_TYPES[hint]) or (isinstance(value, bool) and hint in (int, float)):
        raise Mismatch(key, value, what)
    if hint is float:
        if not math.isfinite(value):
            raise Mismatch(key, value, what.replace("a number", "a finite number", 1))
        value = float(value)
    if hint is str and not isinstance(value, str):
        value = show(value)  # as typed: hydra reads `resume=true` as a bool, and it means "true", not "True"
    if rule.choices is not None and value not in rule.choices:
        raise Mismatch(key, given, what)
    if hint in (int, float) and not in_range(value, rule):
        raise Mismatch(key, given, what)
    if rule.path:
        if not value.strip():
            raise Mismatch(key, given, what)
        if not value.isprintable():  # a line break would split every line that names the path
            raise Mismatch(key, given, "a path without line breaks, tabs or other control characters")
        value = os.path.expanduser(value)  # `~/runs` means the home folder, not a folder named "~"
    return value


def in_range(number: float, rule: Rule) -> bool:
    return ((rule.minimum is None or number >= rule.minimum) and (rule.maximum is None or number <= rule.maximum)
            and (rule.above is None or number > rule.above) and (rule.below is None or number < rule.below))


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(hint: Any, rule: Rule, optional: bool = False) -> str:
    """What a value must be, in words: "a number > 0", "an integer in [0, 4294967296)", "one of a, b"."""
    if rule.choices is not None:
        what = "one of " + ", ".join(c if isinstance(c, str) else show(c) for c in rule.choices)
    elif rule.path:
        what = "a non-empty path"
    elif hint is int and rule.minimum == 1 and rule.maximum is None and rule.below is None:
        what = "a positive integer"
    else:
        what = TYPE_WORDS.get(hint, "a list [a, b, ...]" if typing.get_origin(hint) is list else str(hint))
        bounds = [(sign, num(x)) for sign, x in ((">=", rule.minimum), (">", rule.above), ("<=", rule.maximum),
                                                  ("<", rule.below)) if x is not None]
        if len(bounds) == 2:  # a lower and an upper bound: "in [0, 1)"
            (low_sign, low), (high_sign, high) = bounds
            what += f" in {'[' if low_sign == '>=' else '('}{low}, {high}{']' if high_sign == '<=' else ')'}"
        elif bounds:
            what += f" {bounds[0][0]} {bounds[0][1]}"
    if optional:
        what = "true, false or null" if hint is bool else what + " or null"
    return what


def num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


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


def not_blank(text: str) -> str | None:
    return "a non-empty name" if not text.strip() else None


def not_a_file(path: str) -> str | None:
    return "a folder, not an existing file" if os.path.isfile(path) else None


def seed_setting(default: int = 1337) -> Any:
    return setting(default, minimum=0, below=SEED_LIMIT, fix="any integer from 0 to 2**32 - 1, e.g. seed=1337")


def device_setting() -> Any:
    return setting("auto", check=device_rule, fix="device=auto picks CUDA, else MPS, else the CPU")
