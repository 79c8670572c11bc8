"""What every command line does with a user's mistake: one short message on stderr, exit status 1.

    # at the bottom of a CLI module; flags are defined only here, so importing it defines none
    if __name__ == "__main__":
        config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
        flags.mark_flags_as_required(["config"])
        cli.run(main)          # instead of absl's app.run(main)

    def main(argv):
        runtime.setup()        # first thing: see runtime.py
        ...                    # raise errors.UserError subclasses for what the user can fix

A user error prints `<program>: error: <message>` (a line or two naming the file, flag or config
key, and the fix where known) and exits 1; the traceback comes first only with `-v 1`. User errors:
  * flag errors: unknown flag, bad flag value, missing required flag;
  * config files (`--config file.py`): missing file, syntax error, an exception while running it,
    no `get_config()`, a `get_config()` that returns no ConfigDict;
  * config overrides (`--config.model.num_stages=3`): unknown key (with the closest known key),
    value of the wrong type;
  * `errors.UserError` raised by `main` (e.g. `configs.validate`'s `ConfigError`), absl's
    `app.UsageError`, and an OSError that names its file (e.g. a full disk): `PATH: reason`.
Any other exception escaping `main` is a bug and keeps its traceback.

A failed run (user error, bug or Ctrl-C) still alive EXIT_GRACE_S seconds after `main` gave up
(threads, atexit hooks, tf.data iterators at finalisation) ends there with status 1 (`_end_within`).
"""
import difflib
import faulthandler
import os
import re
import signal
import sys
import traceback
from typing import Callable, NoReturn, Sequence

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections.config_flags import config_flags as config_flags_impl  # is_config_flag: not re-exported

from cpm_jax import errors

FLAGS = flags.FLAGS

# Seconds a failed run may take to exit once `main` has given up (see the module docstring):
# enough to finish a checkpoint write in flight and flush the logs.
EXIT_GRACE_S = 10.0


def run(main: Callable[[list[str]], None], *, argv: list[str] | None = None,
        program: str | None = None) -> NoReturn:
    """`absl.app.run(main, argv)` with user errors reported in a line or two (module docstring).

    main: the CLI's `main(argv)`; it should call `runtime.setup()` first.
    argv: the command line (default sys.argv), e.g. without a subcommand already consumed.
    program: the name in messages; default the module run with `python -m` (`cpm_jax.train`),
      else the script's file name."""
    program = program or _program_name()

    def parse_flags(argv: list[str]) -> list[str]:
        return _parse_flags(argv, program)

    def guarded_main(argv: list[str]) -> None:
        try:
            main(argv)
        except (errors.UserError, app.UsageError) as error:
            message = str(error)
            if isinstance(error, app.UsageError):
                message += "\n(--helpshort lists the flags)"
            _fail(program, message, error, _verbosity_after_parsing() >= 1)
        except OSError as error:
            if error.filename is None:  # no file to name: a bug, with its traceback
                raise
            _fail(program, describe_os_error(error), error, _verbosity_after_parsing() >= 1)

    try:
        app.run(guarded_main, argv=argv, flags_parser=parse_flags)
    except BaseException as end:  # app.run always ends in SystemExit, or lets a bug's exception go up
        if not (isinstance(end, SystemExit) and end.code in (0, None)):
            _end_within(EXIT_GRACE_S, verbose=_verbosity_after_parsing() >= 1)
        raise
    raise AssertionError("app.run returned")  # it always exits


_watchdog_output = None


def _end_within(seconds: float, verbose: bool = False) -> None:
    """Bounds the exit of a failed run: after `seconds` the process ends with status 1 wherever
    it is (faulthandler's watchdog: a C thread that needs no GIL and lasts until modules are
    cleared at the end of finalisation, where a tf.data iterator still alive would hang), and 10 s
    later SIGALRM's default action ends it in any case (C++ static destructors after Python).
    Its thread dump goes to /dev/null, so that the error stays stderr's last line (to stderr with
    `-v 1`)."""
    global _watchdog_output
    sys.stdout.flush()
    sys.stderr.flush()
    _watchdog_output = sys.stderr if verbose else open(os.devnull, "w")  # noqa: SIM115 (kept open)
    faulthandler.dump_traceback_later(seconds, exit=True, file=_watchdog_output)
    if hasattr(signal, "alarm") and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None):
        signal.alarm(int(seconds) + 10)


def _program_name() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def _fail(program: str, message: str, error: BaseException | None, verbose: bool) -> NoReturn:
    if verbose and error is not None:
        traceback.print_exception(error, file=sys.stderr)
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def describe_os_error(error: OSError) -> str:
    """`PATH: reason` (`PATH -> PATH2: reason` for a rename or link) of an OSError that names its file."""
    where = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else f"{error.filename}"
    return f"{where}: {error.strerror or error} (-v 1 shows the traceback)"


def _verbosity_after_parsing() -> int:
    try:
        return int(FLAGS.verbosity)
    except (AttributeError, flags.Error, TypeError, ValueError):
        return 0


def _verbosity_in_argv(argv: Sequence[str]) -> int:
    """absl's `-v N` / `--verbosity=N` read from argv, for errors before (or while) flags parse."""
    level = 0
    for i, arg in enumerate(argv[1:], 1):
        match = re.fullmatch(r"--?(?:v|verbosity)(?:=(.*))?", arg)
        if not match:
            continue
        value = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
        try:
            level = int(value)
        except ValueError:
            pass
    return level


class _DropConfigFlagsNoneWarning:
    """config_flags logs a warning when get_config() returns None, and absl then reports the flag
    as missing; the message here says both in one line, so the warning is dropped."""

    def filter(self, record) -> bool:
        return "returned None" not in str(record.msg)


def _parse_flags(argv: list[str], program: str) -> list[str]:
    files = _config_files_in_argv(argv)
    quiet = _DropConfigFlagsNoneWarning()
    absl_logger = absl_logging.get_absl_logger()
    absl_logger.addFilter(quiet)
    try:
        rest = FLAGS(argv)
    except Exception as error:  # noqa: BLE001  (every failure here comes from the command line)
        _fail(program, describe_flag_error(error, files), error, _verbosity_in_argv(argv) >= 1)
    finally:
        absl_logger.removeFilter(quiet)
    for name, path in files.items():
        problem = _config_value_problem(name, path, FLAGS[name].value)
        if problem:
            stored = getattr(FLAGS[name].value, "_error", None)
            _fail(program, problem, stored if isinstance(stored, BaseException) else None,
                  _verbosity_after_parsing() >= 1)
    return rest


def _config_files_in_argv(argv: Sequence[str]) -> dict[str, str]:
    """{config flag name: the file given on the command line} (without a `:argument` suffix)."""
    names = [name for name in FLAGS if config_flags_impl.is_config_flag(FLAGS[name])
             and isinstance(FLAGS[name].parser, config_flags_impl.ConfigFileFlagParser)]
    found = {}
    for name in names:
        for i, arg in enumerate(argv[1:], 1):
            match = re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", arg)
            if match:
                value = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
                found[name] = value.split(":", 1)[0]
    return found


def _config_value_problem(name: str, path: str, value) -> str | None:
    """What is wrong with a config flag's value once parsing finished; None if it is usable."""
    if isinstance(value, ml_collections.ConfigDict):
        return None
    if isinstance(getattr(value, "_error", None), BaseException):  # config_flags' deferred load error
        if not os.path.exists(path):
            return f"--{name}={path}: no such file"
        if os.path.isdir(path):
            return f"--{name}={path}: is a directory, not a config file (experiments/*.py)"
        line = _line_in(value._error, path)
        if line is not None:
            return (f"{path}:{line}: {_exception_line(value._error)} "
                    f"(while running the config file of --{name}; -v 1 shows the traceback)")
        missing = _missing_file_while_loading(value._error)
        if missing:  # the file exists: a FileNotFoundError raised while running it (config_flags keeps its text only)
            return (f"{path}: FileNotFoundError: {missing} (while running the config file of --{name}: "
                    "a file it reads is missing)")
        return f"--{name}={path}: cannot be read: {_first_line(value._error)}"
    if value is None:
        return f"--{name}={path}: get_config() returned None (a missing return statement?)"
    return (f"--{name}={path}: get_config() returned a {type(value).__name__}, not an "
            "ml_collections.ConfigDict (start from cpm_jax.configs.paper_config(...))")


def describe_flag_error(error: BaseException, files: dict[str, str]) -> str:
    """A line or two saying what went wrong while parsing the command line, naming the flag, the
    config file (with the line) or the config key. `files`: {config flag: file given}."""
    chain = _chain(error)
    if isinstance(error, errors.UserError):  # raised by a flag's own parser or validator
        return str(error)
    for e in chain:  # a syntax error in the config file (or a module it imports)
        if isinstance(e, SyntaxError) and e.filename:
            return f"{e.filename}:{e.lineno}: syntax error: {e.msg}"
    for name, path in files.items():
        for e in chain:  # the config file's own code raised
            line = _line_in(e, path)
            if line is not None:
                return (f"{path}:{line}: {_exception_line(e)} "
                        f"(while running the config file of --{name}; -v 1 shows the traceback)")
        for e in chain:
            if isinstance(e, AttributeError) and "get_config" in str(e):
                return (f"--{name}={path}: the file defines no get_config() (a config file's "
                        "get_config() returns an ml_collections.ConfigDict; see experiments/)")
    override = _override_error(chain)
    if override:
        return override
    for e in chain:
        if isinstance(e, flags.Error):
            message = _first_line(e)
            if message.endswith("Error whilst parsing config file:"):  # config_flags' wrapper
                name = next(iter(files), "config")
                return f"--{name}={files.get(name, '')}: {_exception_line(chain[-1])} (-v 1 shows the traceback)"
            missing = re.search(r"Flag --(\S+) must have a value other than None", message)
            if missing and missing.group(1) in files:
                return (f"--{missing.group(1)}={files[missing.group(1)]}: get_config() returned None "
                        "(a missing return statement?)")
            if missing:
                return f"--{missing.group(1)} is required\n(--helpshort lists the flags)"
            return f"{message}\n(--helpshort lists the flags)"
    return f"{type(error).__name__}: {_first_line(error)} (-v 1 shows the traceback)"


def _chain(error: BaseException) -> list[BaseException]:
    """error, then what it was raised from or during, and so on."""
    seen, out = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def _first_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _exception_line(error: BaseException) -> str:
    """`Type: the message's first line`, or `Type` for an exception without a message."""
    text = _first_line(error)
    return type(error).__name__ if text == type(error).__name__ else f"{type(error).__name__}: {text}"


def _missing_file_while_loading(error: BaseException) -> str | None:
    """config_flags' "Failed loading config file" error (a FileNotFoundError raised while the file
    ran, kept as text under "Attempted [...]:"): that text, e.g. "[Errno 2] No such file or
    directory: 'x.json'"; None for any other error."""
    lines = str(error).splitlines()
    if not lines or not lines[0].startswith("Failed loading config file") or len(lines) < 4:
        return None
    return lines[-1].strip() or None


def _line_in(error: BaseException, path: str) -> int | None:
    """The innermost line of `path` in the error's traceback, or None."""
    if not path:
        return None
    target = os.path.realpath(path)
    line = None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if os.path.realpath(frame.f_code.co_filename) == target:
            line = lineno
    return line


def _override_error(chain: list[BaseException]) -> str | None:
    """`--config.a.b=v` that names no key, with the closest existing key: found from the locals
    of config_flags' parse frame (`self`: the config flag, `config`: the loaded config, and
    `field_path` or `overrides`: the override(s) being applied)."""
    for e in chain:
        for frame, _ in traceback.walk_tb(e.__traceback__):
            local = frame.f_locals
            if "config" not in local or not config_flags_impl.is_config_flag(local.get("self")):
                continue
            flag, config = local["self"].name, local["config"]
            paths = [local["field_path"]] if "field_path" in local else list(local.get("overrides") or ())
            if not paths:
                continue
            if not isinstance(config, ml_collections.ConfigDict):
                return (f"--{flag}.{paths[0]}: the config file's get_config() returned a "
                        f"{type(config).__name__}, not an ml_collections.ConfigDict")
            for path in paths:
                problem = missing_key(config, path)
                if problem:
                    return f"--{flag}.{path}: {problem}"
            if "field_path" in local:
                return f"--{flag}.{paths[0]}: {type(e).__name__}: {_first_line(e)}"
    return None


def missing_key(config: ml_collections.ConfigDict, path: str) -> str | None:
    """Why `config.<path>` names nothing, or None if it does."""
    node, parents = config, ["config"]
    for key in path.split("."):
        where = ".".join(parents)
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{where} is {node!r} ({type(node).__name__}), which has no key {key!r}"
        if key not in node:
            known = sorted(node.keys())
            close = difflib.get_close_matches(key, known, n=1)
            return f"{where} has no key {key!r}; " + (f"did you mean {close[0]!r}?" if close
                                                       else f"known: {', '.join(known)}")
        node, parents = node[key], parents + [key]
    return None
