"""How every entry point (train.py, sample.py, python -m data.prepare, python -m heads.report,
python -m model.export) reads its command line and how it ends.

Before hydra: UTF-8 values need no quotes (`prompt=人民日报`), and a mistyped key or group option
is one line naming the closest valid one. At the end: a user error is one line on stderr and
exit 2, Ctrl-C is one line and exit 130, a closed output pipe (`python sample.py | head`) one line
and exit 141, never a traceback."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from data.sources import DataError
from data.tokenizer import TokenizerError
from model.hf import PretrainedError
from trainer.checkpoint import CheckpointError
from trainer.lock import FolderBusy
from trainer.runtime import ConfigError

# bad settings, inputs, checkpoints, pretrained models (missing, offline, not GPT-2) or a folder in
# use: the message names the culprit and the fix
USER_ERRORS = (ConfigError, DataError, TokenizerError, CheckpointError, PretrainedError, FolderBusy)


def run_entry(job: Callable[[], object], interrupted: Callable[[], str] = lambda: "nothing was written") -> None:
    """Run `job`; on a user error print `error: <message>` and exit 2, on Ctrl-C print
    `interrupted: <interrupted()>` (what is on disk now) and exit 130, when stdout's reader went
    away (SIGPIPE's exit code) say so on stderr and exit 141."""
    try:
        job()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        print(f"stopped: the program reading the output went away; {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(141)


# hydra's override grammar takes only ASCII in unquoted values: `prompt=人民日报` is a lexer error
# unless quoted. hydra_argv quotes such values before hydra reads sys.argv.
_OPEN, _CLOSE = "([{", ")]}"
_UNESCAPE = re.compile(r"\\([\\()\[\]{}:=, \t])")  # hydra's ESC sequences in unquoted text


def _split_top(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` outside quotes, brackets and backslash escapes."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _single_quoted(text: str) -> str:
    """`text` as one hydra single-quoted string: backslashes before a quote or at the end doubled,
    quotes escaped (see QUOTED_VALUE in hydra/grammar/OverrideLexer.g4)."""
    text = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, text) + "'"


def _quote_element(item: str) -> str:
    """One value element: nested lists, dicts and sweep/function calls recursively, an unquoted
    non-ASCII string quoted; anything else (ASCII, quoted, interpolations) as it is."""
    core = item.strip()
    if core.isascii() or "${" in core or (len(core) >= 2 and core[0] == core[-1] and core[0] in "'\""):
        return item
    lead, trail = item[: len(item) - len(item.lstrip())], item[len(item.rstrip()):]
    if core[0] == "[" and core[-1] == "]":
        new = "[" + ",".join(_quote_element(x) for x in _split_top(core[1:-1], ",")) + "]"
    elif core[0] == "{" and core[-1] == "}":
        new = "{" + ",".join(_quote_dict_item(x) for x in _split_top(core[1:-1], ",")) + "}"
    elif (call := re.fullmatch(r"([A-Za-z_]\w*)\((.*)\)", core, re.DOTALL)) and call[1].isascii():
        new = f"{call[1]}(" + ",".join(_quote_argument(x) for x in _split_top(call[2], ",")) + ")"
    else:
        new = _single_quoted(_UNESCAPE.sub(r"\1", core))
    return lead + new + trail


def _quote_dict_item(item: str) -> str:
    key, sep, value = item.partition(":")
    return key + sep + _quote_element(value) if sep else _quote_element(item)


def _quote_argument(item: str) -> str:
    name = re.match(r"\s*[A-Za-z_]\w*\s*=", item)
    return item[: name.end()] + _quote_element(item[name.end():]) if name else _quote_element(item)


def hydra_argv(argv: list[str]) -> list[str]:
    """Command-line arguments (without the program name) as hydra can parse them: in an override
    `key=value` whose value has unquoted non-ASCII text, each such element (the whole value, each
    item of a `[...]` list or `{...}` dict, each item of a sweep `a,b`) becomes a single-quoted
    string. Flags, ASCII arguments and quoted values are returned unchanged."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep or value.isascii():
            out.append(arg)
        else:
            out.append(key + sep + ",".join(_quote_element(x) for x in _split_top(value, ",")))
    return out


CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
_NO_CHECK_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--config-path", "-cp",
                   "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--version"}


def check_overrides(argv: list[str], config_name: str, command: str, config_dir: Path = CONFIG_DIR) -> None:
    """Raise ConfigError naming the closest valid key for an override of a key the config of
    `config_name` lacks (`model.n_layr=3`) or an unknown option of a config group (`preset=gpu`);
    hydra's own keys (`hydra.*`), appends (`+k=v`, `++k=v`) and deletions (`~k`) are left to hydra,
    as is anything it cannot parse."""
    overrides, skip = [], False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif flag in _NO_CHECK_FLAGS:
            return
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    if not overrides:
        return
    from difflib import get_close_matches

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException
    from omegaconf import DictConfig, ListConfig, OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # hydra reports its own syntax errors
    parsed = [o for o in parsed if not (o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None)
              and o.key_or_group.split(".")[0] != "hydra"]
    # groups the primary config leaves out by default (preset: null)
    defaults = OmegaConf.load(config_dir / f"{config_name}.yaml").get("defaults", [])
    optional = {k for entry in defaults if isinstance(entry, DictConfig) for k, v in entry.items() if v is None}
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        groups = {g for g in loader.list_groups("") if g != "hydra"}
        chosen = []
        for o in parsed:
            if o.key_or_group not in groups:
                continue
            value = o.value()
            options = loader.get_group_options(o.key_or_group)
            picks = value.list if isinstance(value, ChoiceSweep) else [value]
            if not all(p is None or isinstance(p, str) for p in picks):
                continue  # glob(), range(), ...: hydra resolves them
            for pick in picks:
                if pick not in options:  # hydra itself fails on `group=null` with a traceback
                    raise ConfigError(f"{o.key_or_group}={pick if pick is not None else 'null'} is not an option: "
                                      f"{o.key_or_group} is one of {', '.join(options)} (config/{o.key_or_group}/)"
                                      + (f", or none: leave {o.key_or_group}= out" if o.key_or_group in optional else ""))
            chosen.append(f"{o.key_or_group}={picks[0]}")
        keys = [o.key_or_group for o in parsed if o.key_or_group not in groups]
        if not keys:
            return
        cfg = compose(config_name=config_name, overrides=chosen)

    def known(key: str) -> bool:
        node = cfg
        for part in key.split("."):
            if isinstance(node, ListConfig):
                return True  # an index: hydra checks it
            if not isinstance(node, DictConfig):
                return False
            if part not in list(node):  # `in node` is False for a ??? value
                return not OmegaConf.is_struct(node)
            node = node._get_node(part)
        return True

    def all_keys(node: object, prefix: str) -> list[str]:
        if not isinstance(node, DictConfig):
            return []
        return [k for name in node
                for k in (prefix + str(name), *all_keys(node._get_node(name), f"{prefix}{name}."))]

    for key in keys:
        if not known(key):
            close = get_close_matches(key, all_keys(cfg, "") + sorted(groups), n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key} is not a setting{hint} ({command} --cfg job lists them all)")


def prepare_hydra_argv(config_name: str, command: str) -> None:
    """In an entry point's `__main__`, before hydra reads sys.argv: quote UTF-8 values
    (hydra_argv), then check the override keys (check_overrides): a bad one is `error: ...`, exit 2."""
    sys.argv[1:] = hydra_argv(sys.argv[1:])
    run_entry(lambda: check_overrides(sys.argv[1:], config_name, command))


def hydra_entry(config_name: str, command: str, job: Callable[[object], object],
                interrupted: Callable[[object], str]) -> None:
    """The whole `__main__` of sample.py and the `python -m` entry points: the command line prepared
    (prepare_hydra_argv), config/<config_name>.yaml composed by hydra with its overrides (each point
    of a `-m` sweep in turn), then job(cfg) under run_entry; interrupted(cfg) says what is on disk
    after Ctrl-C."""
    import hydra

    prepare_hydra_argv(config_name, command)

    @hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "config"), config_name=config_name,
                version_base=None)
    def run(cfg) -> None:
        run_entry(lambda: job(cfg), interrupted=lambda: interrupted(cfg))

    run()
