"""How every entry point reads its command line and how it ends: the safety layer, which a first reading
can skip. String settings take the text typed, output never stops a job, SIGTERM and SIGHUP stop it as
Ctrl-C does, and a failure a user can act on ends as one line and an exit code (run_entry), not a traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path

import hydra
from hydra._internal.utils import get_args
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf

from common.errors import ConfigError, UserError
from common.folders import check_writable
from common.settings import setting_keys, setting_type, unwrap_optional
from common.sweeps import sweep_left


class OutputError(UserError):
    """The output that is a command's result (sample.py's text) cannot be written."""


def run_entry(job: Callable[[], object], interrupted: Callable[[], str] = lambda: "nothing was written") -> None:
    """Run `job`; a failure the user can act on is one line on stderr (in a `-m` sweep, naming the points
    that did not run) and an exit code; interrupted() says what is on disk after a stop."""
    try:
        job()
        if sys.stdout is not None:
            sys.stdout.flush()  # the last lines too, while a failure can still be said
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM or SIGHUP (raise_interrupt): exit 128 + the signal
        name = str(e.args[0]) if e.args else "SIGINT"
        said = "interrupted" if name == "SIGINT" else f"stopped by {name}"
        print(f"\n{said}: {interrupted()}{sweep_left()}", file=sys.stderr, flush=True)
        sys.exit(128 + signal.Signals[name])
    except BrokenPipeError:  # `python sample.py | head`: exit 141, as a shell's own commands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        print(f"stopped: the program reading the output went away; {interrupted()}", file=sys.stderr, flush=True)
        sys.exit(141)
    except Exception as e:  # noqa: BLE001 - a user error or a write that found no room is one line; the rest re-raised
        line = str(e) if isinstance(e, UserError) else no_room(e)
        if line is None:
            raise
        print(f"error: {line}{sweep_left()}", file=sys.stderr, flush=True)
        sys.exit(2)


def no_room(error: BaseException) -> str | None:
    """The one line for a failure caused, somewhere down its chain, by a write that found no room
    (torch.compile's cache, a library's temp file); None for any other failure."""
    full = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full disk, a quota, a read-only file system
    cause, inductor = error, False
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in full):
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


# hydra's override grammar takes only ASCII in unquoted values (`prompt=人民日报` is a lexer error), no `!`,
# `'`, `#` or leading `~` (`prompt=Hello!`, `out_dir=~/runs`), and reads a comma as a list or a sweep
# (`prompt=To be, or not to be`): hydra_argv quotes values before hydra reads sys.argv.
_UNESCAPE = re.compile(r"\\([\\()\[\]{}:=, \t])")  # hydra's ESC sequences in unquoted text
_CALL = re.compile(r"([A-Za-z_]\w*)\((.*)\)", re.DOTALL)  # a sweep function: choice(a,b), range(1,5)


def sweeping(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def _split_commas(text: str) -> list[str]:
    """`text` cut at each comma outside quoted strings, brackets and backslash escapes (a quote opens a
    string only where an element starts: the apostrophe of `What's` does not)."""
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
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _quoted(typed: str) -> str:
    """`typed`, its hydra escapes (`\\,`) undone, as one hydra single-quoted string: backslashes before a
    quote or at the end doubled, quotes escaped (QUOTED_VALUE in hydra/grammar/OverrideLexer.g4)."""
    text = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", _UNESCAPE.sub(r"\1", typed))
    return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, text) + "'"


def _as_is(core: str) -> bool:
    """Quoted already, an interpolation, or null: hydra reads it as meant."""
    return "${" in core or core == "null" or (len(core) >= 2 and core[0] == core[-1] and core[0] in "'\"")


def _plain_text(core: str) -> bool:
    """Whether hydra reads `core` unquoted as that very text (`adamw`, `out/a-1`): a sweep's point then
    keeps its plain name in folder names."""
    try:
        return OverridesParser.create().parse_override(f"k={core}").value() == core
    except HydraException:
        return False


def _quote_element(item: str, text: bool = False, calls: bool = True) -> str:
    """One element of a value, quoted where hydra would not read it as typed (non-ASCII text; with `text`,
    any but plain text); lists, dicts and (with `calls`) sweep functions element by element."""
    core = item.strip()
    if _as_is(core) or (core.isascii() and (not text or calls and _plain_text(core))):
        return item
    call = _CALL.fullmatch(core) if calls else None
    if core[:1] == "[" and core[-1:] == "]":
        start, inner, name, calls = "[", core[1:-1], None, calls and not text
    elif core[:1] == "{" and core[-1:] == "}" and not text:
        start, inner, name = "{", core[1:-1], r"[^:]*:"
    elif call and call[1].isascii():
        start, inner, name = f"{call[1]}(", call[2], r"\s*[A-Za-z_]\w*\s*="  # range(start=1, stop=5)
    else:
        return item.replace(core, _quoted(core), 1)  # the spaces around it stay outside the quotes
    elements = []
    for element in _split_commas(inner):
        kept = re.match(name, element) if name else None
        cut = kept.end() if kept else 0
        elements.append(element[:cut] + _quote_element(element[cut:], text, calls))
    return item.replace(core, start + ",".join(elements) + core[-1], 1)


def hydra_argv(argv: list[str], text: Callable[[str], bool] = lambda key: False) -> list[str]:
    """Command-line arguments as hydra can parse them: a string setting's value (text(key)) is the text
    typed, commas included, except that they separate the points of a `-m` sweep and the items of a `[...]`
    list; in any other value each unquoted non-ASCII element is quoted."""
    sweep = sweeping(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        is_text, core = bool(sep) and text(key), value.strip()
        if arg.startswith("-") or not sep or (value.isascii() and not is_text):
            out.append(arg)
        elif is_text and not sweep and not _as_is(core) and not (core[:1] == "[" and core[-1:] == "]"):
            out.append(f"{key}={_quoted(value)}")  # the whole value, as typed
        else:  # a list, or the points of a sweep: element by element
            out.append(f"{key}=" + ",".join(_quote_element(x, is_text, calls=sweep or not is_text)
                                            for x in _split_commas(value)))
    return out


CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def check_overrides(argv: list[str], config_name: str, command: str, settings: type) -> None:
    """Raise ConfigError for an override hydra cannot read (`model.n_layer=3!`), several values outside a
    `-m` sweep, a key the settings dataclass lacks (`~model.n_layr`) or an unknown option of a config
    group (`preset=gpu`), naming the closest valid one; `hydra.*` keys and `+k=v` appends are hydra's."""
    args = get_args(argv)  # hydra's own reading of its flags
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_path or args.config_name
            or args.config_dir or args.experimental_rerun):
        return  # hydra answers these itself, or reads another config
    parser, parsed = OverridesParser.create(), []
    for arg in args.overrides:
        if "=" not in arg and not arg.startswith("~"):
            continue
        try:
            [override] = parser.parse_overrides([arg])
        except HydraException:
            raise ConfigError(f"{arg} cannot be read (hydra's override grammar: https://hydra.cc/docs/advanced/"
                              "override_grammar/basic): check the value; text with characters such as ! ' # or a "
                              "comma is quoted, key='...'") from None
        if override.is_sweep_override() and not args.multirun:
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
    """`~wandb.name` as `wandb.name=null` where null is its default: hydra cannot delete a null value,
    and deleting a setting means its default."""
    found = setting_type(settings, arg[1:]) if arg.startswith("~") and "=" not in arg else None
    return f"{arg[1:]}=null" if found is not None and found[1] is None else arg


def check_utf8(arg: str) -> None:
    """Python keeps the bytes of argv that are not UTF-8 as surrogates, which no file, JSON or log line can take."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError as e:
        shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"{shown} is not UTF-8 text (byte 0x{ord(arg[e.start]) - 0xdc00:02x}): type it in UTF-8, "
                          "or rename the file or folder to a UTF-8 name") from None


def check_sweep_folder(argv: list[str], config_name: str) -> None:
    """hydra writes multirun.yaml into hydra.sweep.dir (train.py: out_dir) before a sweep's first job: a
    folder that cannot be written is one line now, not hydra's traceback."""
    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(get_args(argv).overrides)
             if not o.is_sweep_override()]
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        folder = hydra.compose(config_name=config_name, overrides=fixed, return_hydra_config=True).hydra.sweep.dir
    check_writable(Path(folder))


def prepare_entry(config_name: str, command: str, settings: type, result: bool = False) -> None:
    """Before hydra reads sys.argv: guard the process, then check the command line and take string
    settings as typed (a bad argument is `error: ...`, exit 2). `result`: stdout is the command's result
    (sample.py), not a log."""
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
    """The whole `__main__` of sample.py and the `python -m` entry points: job(cfg) for the config hydra
    composes (each point of a `-m` sweep in turn), under run_entry. A sweep's multirun.yaml goes to a temp
    folder, removed at the end: these commands write nothing beside the files they are for."""
    sweep_folder = None
    if sweeping(sys.argv):
        sweep_folder = tempfile.mkdtemp(prefix="gpt-attention-sweep-")
        sys.argv.append(f"hydra.sweep.dir={sweep_folder}")
    prepare_entry(config_name, command, settings, result)

    @hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base=None)
    def run(cfg) -> None:
        run_entry(lambda: job(cfg), interrupted=lambda: interrupted(cfg))

    try:
        run()
    finally:
        if sweep_folder is not None:
            shutil.rmtree(sweep_folder, ignore_errors=True)


# Ctrl-C, SIGTERM and SIGHUP (a closed terminal or ssh session) each stop a command as a KeyboardInterrupt
# naming the signal; the training loop finishes its step and saves instead (trainer/guards.py: GracefulStop)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_stop_signals(handler) -> dict:
    """Handle each stop signal not ignored (SIGHUP under nohup stays so) with `handler`; return the previous."""
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # run_entry exits 128 + its number


class Output:
    """sys.stdout or sys.stderr while an entry point runs. Characters the stream's encoding lacks are
    written as backslash escapes, said once. A write that fails never stops a job: stdout says so once on
    stderr and drops the rest, except where it is the command's result (sample.py), which then stops."""

    def __init__(self, stream, name: str, result: bool = False):
        self.stream, self.name, self.result = stream, name, result
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                try:
                    self.stream.write(text)
                except UnicodeEncodeError:  # `PYTHONIOENCODING=ascii`, a cp1252 console: escapes from here on
                    print(f"note: {self.name} is {self.stream.encoding}: characters it cannot show are written as "
                          "\\u escapes (PYTHONIOENCODING=utf-8 shows them)", file=sys.stderr, flush=True)
                    self.stream.reconfigure(errors="backslashreplace")
                    self.stream.write(text)
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
        try:  # the file the stream goes to (/mnt/full/log), or "a pipe"
            target = os.readlink(f"/proc/self/fd/{self.stream.fileno()}")
            target = f"a {target.split(':')[0]}" if target.startswith(("pipe:", "socket:")) else target
        except (OSError, ValueError):
            target = "its file"
        with contextlib.suppress(OSError, ValueError):  # Python's flush at exit must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        if self.result:
            if isinstance(error, BrokenPipeError):
                raise error  # run_entry's exit 141
            raise OutputError(f"cannot write the output to {target} ({error.strerror}): free space there, or send "
                              "it elsewhere")
        if self.name == "stdout":
            print(f"warning: cannot write to stdout ({target}: {error.strerror}): its lines are dropped from here on; "
                  "the job goes on", file=sys.stderr, flush=True)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


# where wandb, matplotlib and this project keep caches and settings, below HOME unless set
CACHE_FOLDERS = {"XDG_CACHE_HOME": ".cache", "MPLCONFIGDIR": ".config/matplotlib", "WANDB_CONFIG_DIR": ".config/wandb",
                 "WANDB_DATA_DIR": ".local/share/wandb"}


def writable(folder: str) -> bool:
    """Whether `folder` can be written, or made below its nearest existing parent."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def usable_caches() -> None:
    """With HOME unset or read-only, wandb and matplotlib print a dozen lines each and wandb cannot stage
    its files: point each such folder at a temp folder instead, said in one line."""
    home = os.environ.get("HOME")
    folders = {var: os.environ.get(var) or (home and os.path.join(home, under)) for var, under in CACHE_FOLDERS.items()}
    unusable = {var: folder for var, folder in folders.items() if not folder or not writable(folder)}
    if not unusable:
        return
    base = Path(tempfile.gettempdir()) / f"gpt-attention-{os.getuid()}"
    for var in unusable:
        os.environ[var] = str(base / var.lower())
    why = "HOME is not set" if not home else f"{next(f for f in unusable.values() if f)} cannot be written"
    print(f"warning: {why}: caches and settings go to {base} instead", file=sys.stderr, flush=True)


def guard_process(result: bool = False) -> None:
    """For the whole process: output that never stops it, SIGTERM and SIGHUP stopping it as Ctrl-C does,
    caches where they can be written."""
    if sys.stdout is not None:  # None when started with the stream closed (`2>&-`): print() then writes nothing
        sys.stdout = Output(sys.stdout, "stdout", result)
    if sys.stderr is not None:
        sys.stderr = Output(sys.stderr, "stderr")
    on_stop_signals(raise_interrupt)
    usable_caches()
