"""How every entry point (train.py, sample.py, python -m data.prepare, python -m heads.report,
python -m data.export) reads its command line and how it ends: the safety layer, which a first
reading can skip.

Before hydra: a string setting takes the text typed (`prompt=To be, or not!`, `out_dir=~/runs`,
`prompt=人民日报`), a mistyped key or group option is one line naming the closest valid one, and a
byte that is not UTF-8 is one line. While running: stdout and stderr never stop a job (characters
the terminal cannot show are escaped, a full disk or a closed pipe under a log is one warning),
SIGTERM and SIGHUP stop it like Ctrl-C, and caches that cannot live under HOME go to a temp
folder. At the end: a user error is one line on stderr and exit 2, Ctrl-C one line and exit 130
(SIGTERM 143, SIGHUP 129), a closed output pipe (`python sample.py | head`) one line and exit 141,
a write that found no room one line naming where; never a traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common.errors import ConfigError, UserError
from common.folders import check_writable
from common.settings import setting_keys, setting_type, unwrap_optional
from common.sweeps import sweep_left


class OutputError(UserError):
    """The output that is a command's result (sample.py's text) cannot be written."""


NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full disk, a quota, a read-only file system


def run_entry(job: Callable[[], object], interrupted: Callable[[], str] = lambda: "nothing was written") -> None:
    """Run `job`; on a user error print `error: <message>` and exit 2; on Ctrl-C (or SIGTERM, SIGHUP)
    print `interrupted: <interrupted()>` (what is on disk now) and exit 128 + the signal; when
    stdout's reader went away say so on stderr and exit 141; when a write found no room (a full
    disk anywhere: a cache, TMPDIR) name where and exit 2. In a `-m` sweep the line also says which
    points did not run."""
    try:
        job()
        if sys.stdout is not None:
            sys.stdout.flush()  # the last lines too, while a failure can still be said
    except UserError as e:  # the message names the culprit and the fix
        print(f"error: {e}{sweep_left()}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        name = str(e.args[0]) if e.args else "SIGINT"  # on_stop_signals' handler names the signal
        said = "interrupted" if name == "SIGINT" else f"stopped by {name}"
        print(f"\n{said}: {interrupted()}{sweep_left()}", file=sys.stderr, flush=True)
        sys.exit(128 + signal.Signals[name])
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        print(f"stopped: the program reading the output went away; {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(141)
    except Exception as e:  # noqa: BLE001 - only a write that found no room is ours to explain; the rest re-raised
        line = no_room(e)
        if line is None:
            raise
        print(f"error: {line}{sweep_left()}", file=sys.stderr, flush=True)
        sys.exit(2)


def no_room(error: BaseException) -> str | None:
    """The one line for a failure caused, somewhere down its chain, by a write that found no room (a
    full disk, a quota, a read-only file system): torch.compile's cache in TMPDIR, a library's temp
    file. None for any other failure."""
    cause, inductor = error, False
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in NO_ROOM):
        inductor = inductor or type(cause).__module__.startswith(("torch._inductor", "torch._dynamo"))
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if inductor:  # Inductor's own errors wrap an OSError that names no file
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return (f"torch.compile cannot write its cache in {cache_dir()} ({cause.strerror}): free space there, set "
                "TORCHINDUCTOR_CACHE_DIR to a folder with room, or use compile=false")
    if cause.filename2 or cause.filename:  # a copy's or a rename's destination, else the file written
        return (f"cannot write {cause.filename2 or cause.filename} ({cause.strerror}): free space there or choose a "
                "folder with room")
    return (f"a write failed ({cause.strerror}), likely in the temp folder {tempfile.gettempdir()}: free space there "
            "or set TMPDIR to a folder with room")


# hydra's override grammar takes only ASCII in unquoted values (`prompt=人民日报` is a lexer error),
# no `!`, `'`, `#` or leading `~` (`prompt=Hello!`, `out_dir=~/runs`), and reads a comma as a list
# or a sweep (`prompt=To be, or not to be`). hydra_argv quotes values before hydra reads sys.argv.
_OPEN, _CLOSE = "([{", ")]}"
_UNESCAPE = re.compile(r"\\([\\()\[\]{}:=, \t])")  # hydra's ESC sequences in unquoted text
_CALL = re.compile(r"([A-Za-z_]\w*)\((.*)\)", re.DOTALL)  # a sweep function: choice(a,b), range(1,5)


def sweeping(argv: list[str]) -> bool:
    """Whether the command line asks hydra for a sweep (`-m`)."""
    return "-m" in argv or "--multirun" in argv


def _split_top(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` outside quoted strings, brackets and backslash escapes (a quote opens
    a string only where an element starts: the apostrophe of `What's` does not)."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"" and text[:i].rstrip()[-1:] in ("", ",", "[", "(", "{", ":", "="):
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


def _as_is(core: str) -> bool:
    """Quoted already, an interpolation, or null: hydra reads it as meant."""
    return "${" in core or core == "null" or (len(core) >= 2 and core[0] == core[-1] and core[0] in "'\"")


def _plain_text(core: str) -> bool:
    """Whether hydra reads `core` unquoted as that very text (`adamw`, `out/a-1`), so a sweep's point
    keeps its plain name in folder names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(f"k={core}").value() == core
    except HydraException:
        return False


def _quote_element(item: str, text: bool = False, calls: bool = True) -> str:
    """One value element: nested lists, dicts and (with `calls`) sweep/function calls recursively;
    an unquoted string quoted when it is non-ASCII, or always when `text` (a string setting's);
    anything else as it is."""
    core = item.strip()
    if _as_is(core) or (core.isascii() and (not text or calls and _plain_text(core))):
        return item
    lead, trail = item[: len(item) - len(item.lstrip())], item[len(item.rstrip()):]
    if core[:1] == "[" and core[-1:] == "]":
        new = "[" + ",".join(_quote_element(x, text, calls and not text) for x in _split_top(core[1:-1], ",")) + "]"
    elif core[:1] == "{" and core[-1:] == "}" and not text:
        new = "{" + ",".join(_quote_dict_item(x) for x in _split_top(core[1:-1], ",")) + "}"
    elif calls and (call := _CALL.fullmatch(core)) and call[1].isascii():
        new = f"{call[1]}(" + ",".join(_quote_argument(x, text) for x in _split_top(call[2], ",")) + ")"
    else:
        new = _single_quoted(_UNESCAPE.sub(r"\1", core))
    return lead + new + trail


def _quote_dict_item(item: str) -> str:
    key, sep, value = item.partition(":")
    return key + sep + _quote_element(value) if sep else _quote_element(item)


def _quote_argument(item: str, text: bool = False) -> str:
    name = re.match(r"\s*[A-Za-z_]\w*\s*=", item)
    return item[: name.end()] + _quote_element(item[name.end():], text) if name else _quote_element(item, text)


def hydra_argv(argv: list[str], text: Callable[[str], bool] = lambda key: False) -> list[str]:
    """Command-line arguments (without the program name) as hydra can parse them. The value of a
    string setting (text(key): `prompt`, `out_dir`, ...) is the text typed, quoted whole, spaces
    and commas included; in a `-m` sweep commas separate its points, each the text typed; `[...]`
    is a list of such texts. In any other override, each unquoted non-ASCII element (the whole
    value, each item of a `[...]` list or `{...}` dict, each point of a sweep `a,b`) becomes a
    single-quoted string. Flags, other ASCII arguments, quoted values, interpolations and null are
    returned unchanged."""
    sweep = sweeping(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        is_text, core = bool(sep) and text(key), value.strip()
        if arg.startswith("-") or not sep or (value.isascii() and not is_text):
            out.append(arg)
        elif is_text and not sweep and not _as_is(core) and not (core[:1] == "[" and core[-1:] == "]"):
            out.append(key + sep + _single_quoted(_UNESCAPE.sub(r"\1", value)))  # the whole value, as typed
        else:  # a list, or the points of a sweep: element by element
            out.append(key + sep + ",".join(_quote_element(x, is_text, calls=sweep or not is_text)
                                            for x in _split_top(value, ",")))
    return out


CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
_NO_CHECK_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--config-path", "-cp",
                   "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--version"}


def check_overrides(argv: list[str], config_name: str, command: str, settings: type) -> None:
    """Raise ConfigError for an override hydra cannot read (`model.n_layer=3!`), one with several
    values outside a `-m` sweep (`model.n_layer=2,4`), a key the settings dataclass lacks
    (`model.n_layr=3`, `~model.n_layr`) or an unknown option of a config group (`preset=gpu`), naming
    the closest valid one; hydra's own keys (`hydra.*`) and appends (`+k=v`, `++k=v`) are hydra's."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=", 1)[0] in _NO_CHECK_FLAGS:
            return
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and ("=" in arg or arg.startswith("~")):
            overrides.append(arg)
    from difflib import get_close_matches

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    parser, parsed = OverridesParser.create(), []
    for arg in overrides:
        try:
            [override] = parser.parse_overrides([arg])
        except HydraException:
            raise ConfigError(f"{arg} cannot be read (hydra's override grammar: https://hydra.cc/docs/advanced/"
                              "override_grammar/basic): check the value; text with characters such as ! ' # or a "
                              "comma is quoted, key='...'") from None
        if override.is_sweep_override() and not sweeping(argv):
            raise ConfigError(f"{arg} gives several values: add -m to run one job for each ({command} -m ...), or "
                              "give one value")
        if not (override.is_add() or override.is_force_add() or override.package is not None
                or override.key_or_group.split(".")[0] == "hydra"):
            parsed.append(override)
    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in CONFIG_DIR.iterdir() if d.is_dir()}
    defaults = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml").get("defaults", [])
    optional = {k for entry in defaults if not isinstance(entry, str) for k, v in entry.items() if v is None}
    keys = setting_keys(settings)
    for o in parsed:
        key, value = o.key_or_group, o.value()
        if key in groups and not o.is_delete():
            picks = value.list if isinstance(value, ChoiceSweep) else [value]
            for pick in picks:  # glob() or range() are hydra's to resolve
                if (pick is None or isinstance(pick, str)) and pick not in groups[key]:
                    raise ConfigError(f"{key}={pick if pick is not None else 'null'} is not an option: {key} is one of "
                                      f"{', '.join(groups[key])} (config/{key}/)"
                                      + (f", or none: leave {key}= out" if key in optional else ""))
        elif key not in keys:
            close = get_close_matches(key, [*keys, *groups], n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key} is not a setting{hint} ({command} --cfg job lists them all)")


def text_setting(settings: type, key: str) -> bool:
    """Whether `key` is a string setting of the settings dataclass (`prompt`, `out_dir`, `wandb.name`)."""
    found = setting_type(settings, key)
    return found is not None and unwrap_optional(found[0])[0] in (str, list[str])


def null_deletion(arg: str, settings: type) -> str:
    """`~wandb.name` (delete a setting) as `wandb.name=null` where null is its default: hydra cannot
    delete a null value, and deleting a setting means its default."""
    found = setting_type(settings, arg[1:]) if arg.startswith("~") and "=" not in arg else None
    return f"{arg[1:]}=null" if found is not None and found[1] is None else arg


def check_utf8(arg: str) -> None:
    """A command-line argument holds only UTF-8 (Python keeps other bytes as surrogates, which no
    file, JSON or log line can take)."""
    raw = arg.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        shown = raw.decode("utf-8", "backslashreplace")
        raise ConfigError(f"{shown} is not UTF-8 text (byte 0x{raw[e.start]:02x}): type it in UTF-8, or rename the "
                          "file or folder to a UTF-8 name") from None


def check_sweep_folder(argv: list[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """hydra writes multirun.yaml into hydra.sweep.dir (train.py: out_dir) before the first job of a
    sweep: a folder that cannot be made or written is one line now, not hydra's traceback."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = [o.input_line for o in OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
             if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        folder = compose(config_name=config_name, overrides=fixed, return_hydra_config=True).hydra.sweep.dir
    check_writable(Path(folder))


def prepare_entry(config_name: str, command: str, settings: type, result: bool = False) -> None:
    """The start of every entry point's `__main__`, before hydra reads sys.argv: guard the process
    (output, signals, caches: guard_process), check that every argument is UTF-8, take string
    settings as typed (hydra_argv), check the override keys (check_overrides) and a sweep's folder;
    a bad one is `error: ...`, exit 2. `settings` is the entry point's settings dataclass; `result`:
    its stdout is its result (sample.py), not a log."""
    guard_process(result)

    def check() -> None:
        for arg in sys.argv[1:]:
            check_utf8(arg)
        argv = hydra_argv([null_deletion(arg, settings) for arg in sys.argv[1:]],
                          lambda key: text_setting(settings, key))
        check_overrides(argv, config_name, command, settings)
        if sweeping(argv):
            check_sweep_folder(argv, config_name)
        sys.argv[1:] = argv

    run_entry(check)


def hydra_entry(config_name: str, command: str, settings: type, job: Callable[[object], object],
                interrupted: Callable[[object], str], result: bool = False) -> None:
    """The whole `__main__` of sample.py and the `python -m` entry points: the command line prepared
    (prepare_entry), config/<config_name>.yaml composed by hydra with its overrides (each point of a
    `-m` sweep in turn), then job(cfg) under run_entry; interrupted(cfg) says what is on disk after
    Ctrl-C. A sweep's multirun.yaml goes to a temp folder, removed at the end: these commands write
    nothing beside the files they are for."""
    import shutil

    import hydra

    sweep_folder = None
    if sweeping(sys.argv):
        sweep_folder = tempfile.mkdtemp(prefix="gpt-attention-sweep-")
        sys.argv.append(f"hydra.sweep.dir={sweep_folder}")
    prepare_entry(config_name, command, settings, result)

    @hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "config"), config_name=config_name,
                version_base=None)
    def run(cfg) -> None:
        run_entry(lambda: job(cfg), interrupted=lambda: interrupted(cfg))

    try:
        run()
    finally:
        if sweep_folder is not None:
            shutil.rmtree(sweep_folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the process: output that never stops a job, stop signals, caches

# Ctrl-C, SIGTERM and SIGHUP (a closed terminal or ssh session) each stop a command as a KeyboardInterrupt
# naming the signal; the training loop finishes its step and saves instead (trainer/guards.py: GracefulStop)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_stop_signals(handler) -> dict:
    """Handle each stop signal with `handler`, except one the process ignores (SIGHUP under nohup
    stays ignored); return the previous handlers."""
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}


def raise_interrupt(signum, frame) -> None:
    """A stop signal as a KeyboardInterrupt naming it: common.cli.run_entry exits 128 + its number."""
    raise KeyboardInterrupt(signal.Signals(signum).name)



class Output:
    """sys.stdout or sys.stderr while an entry point runs. Characters the stream's encoding lacks
    (`PYTHONIOENCODING=ascii`, a cp1252 console) are written as backslash escapes, said once. A
    write that fails (a full disk, a closed terminal or pipe) never stops a job: stdout says so once
    on stderr and drops the rest, except where it is the command's result (sample.py), which then
    stops (OutputError, exit 2; a closed pipe exit 141, see run_entry)."""

    def __init__(self, stream, name: str, result: bool = False):
        self.stream, self.name, self.result = stream, name, result
        self.escaping = self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                try:
                    self.stream.write(text)
                except UnicodeEncodeError:
                    encoding = self.stream.encoding
                    if not self.escaping:
                        self.escaping = True
                        print(f"note: {self.name} is {encoding}: characters it cannot show are written as \\u "
                              "escapes (PYTHONIOENCODING=utf-8 shows them)", file=sys.stderr, flush=True)
                    self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except OSError as e:
                self.failed(e)
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError as e:
                self.failed(e)

    def failed(self, error: OSError) -> None:
        self.lost = True
        target = where_to(self.stream)
        with contextlib.suppress(OSError, ValueError):  # Python's flush at exit must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        if self.result:
            if isinstance(error, BrokenPipeError):
                raise error
            raise OutputError(f"cannot write the output to {target} ({error.strerror}): free space there, or send "
                              "it elsewhere")
        if self.name == "stdout":
            print(f"warning: cannot write to stdout ({target}: {error.strerror}): its lines are dropped from here on; "
                  "the job goes on", file=sys.stderr, flush=True)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def where_to(stream) -> str:
    """The file a standard stream goes to (/mnt/full/log), or "a pipe"."""
    try:
        target = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, ValueError):
        return "its file"
    return f"a {target.split(':')[0]}" if target.startswith(("pipe:", "socket:")) else target


# where wandb, matplotlib and this project keep caches and settings, below HOME unless set
CACHE_FOLDERS = {"XDG_CACHE_HOME": ".cache", "MPLCONFIGDIR": ".config/matplotlib", "WANDB_CONFIG_DIR": ".config/wandb",
                 "WANDB_DATA_DIR": ".local/share/wandb"}


def writable(folder: str) -> bool:
    """Whether `folder` can be written, or made below its nearest existing parent."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def usable_caches() -> None:
    """With HOME unset or read-only (or XDG_CACHE_HOME), wandb's service and matplotlib print a
    dozen lines each and wandb cannot stage its files: point each such folder at a temp folder
    instead, said in one line."""
    home = os.environ.get("HOME")
    unusable = {var: os.environ.get(var) or (home and os.path.join(home, under)) for var, under in CACHE_FOLDERS.items()}
    unusable = {var: folder for var, folder in unusable.items() if not folder or not writable(folder)}
    if not unusable:
        return
    base = Path(tempfile.gettempdir()) / f"gpt-attention-{os.getuid()}"
    for var in unusable:
        os.environ[var] = str(base / var.lower())
    why = "HOME is not set" if not home else f"{next(f for f in unusable.values() if f)} cannot be written"
    print(f"warning: {why}: caches and settings go to {base} instead", file=sys.stderr, flush=True)


def guard_process(result: bool = False) -> None:
    """For the whole process: output that never stops it (Output), SIGTERM and SIGHUP (a closed
    terminal) stopping it as Ctrl-C does (common/cli.py), caches where they can be written."""
    if sys.stdout is not None:  # None when started with the stream closed (`2>&-`): print() then writes nothing
        sys.stdout = Output(sys.stdout, "stdout", result)
    if sys.stderr is not None:
        sys.stderr = Output(sys.stderr, "stderr")
    on_stop_signals(raise_interrupt)
    usable_caches()
