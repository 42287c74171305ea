"""The one user-facing error type, and the printer that turns any config mistake into one line, exit code 2.

Contract (DESIGN.md): `error: <dotted.key>: <what is wrong>. <how to fix>` on stderr, exit code 2, no traceback
(`HYDRA_FULL_ERROR=1` shows the full one).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable

EXIT_USAGE = 2
RANK_ZERO_GRACE_S = 3.0  # a launch's other processes, on a mistake every rank finds: rank 0 says it first


class ConfigError(Exception):
    """A mistake in the user's config or data: where it is, what is wrong, how to fix it."""

    def __init__(self, key: str, problem: str, fix: str = ""):
        self.key, self.problem, self.fix = key, problem.rstrip("."), fix.rstrip(".")
        super().__init__(self.line())

    def __reduce__(self) -> tuple:
        """Pickled as its parts (a sweep's job under submitit sends it back to the sweep's process)."""
        return type(self), (self.key, self.problem, self.fix)

    def line(self) -> str:
        fix = self.fix[:1].upper() + self.fix[1:] if self.fix else ""
        if fix and fix[-1] not in ".?!":
            fix += "."
        return f"error: {self.key}: {self.problem}. {fix}".rstrip()


class RunFailed(ConfigError):
    """A run that started and cannot give a sound result (a NaN loss): one line, status failed, exit code 1."""

    exit_code = 1


def did_you_mean(word: str, options: Iterable[str], synonyms: dict[str, str] | None = None,
                 prefix: str = "") -> str:
    """"did you mean 'x'?" from a synonym table or spelling, else the list of valid options."""
    options = sorted(set(options))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    guess = (synonyms or {}).get(word) if (synonyms or {}).get(word) in options else (close[0] if close else None)
    if guess:
        return f"did you mean '{prefix}{guess}'?"
    return "choose one of: " + ", ".join(options) if options else ""


# --- translating Hydra / OmegaConf compose errors into the one-line contract --------------------------------

_MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^']+)'")
_AVAILABLE = re.compile(r"Available options in '[^']+':\n((?:\t.*\n?)+)")
_FULL_KEY = re.compile(r"full_key: (\S+)")
_NOT_IN_STRUCT = re.compile(r"Key '([^']+)' (?:not in|is not in struct)")
_CONVERT = re.compile(r"Value '([^']*)' (?:of type '[^']*' )?could not be converted to (\w+)")
_NOT_OPTIONAL = re.compile(r"field '([^']+)' is not Optional")
_NOT_A_LIST = re.compile(r"is not a ListConfig, list or tuple")
_NOT_A_DICT = re.compile(r"is not a (?:DictConfig|dict)|Cannot merge (?:DictConfig|ListConfig) with|"
                         r"Cannot assign \w+ to Dict")
_BAD_ENUM = re.compile(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]")


def translate_compose_error(ex: BaseException) -> ConfigError | None:
    """Map a Hydra/OmegaConf composition failure to a ConfigError; None when it is not one we understand."""
    text = str(ex)
    cause = ex.__cause__
    full = text + ("\n" + str(cause) if cause is not None else "")

    missing = _MISSING_OPTION.search(full)
    if missing:
        group, option = missing.groups()
        avail = _AVAILABLE.search(full)
        options = [o.strip() for o in avail.group(1).splitlines()
                   if o.strip() and not o.strip().endswith("_schema")] if avail else []
        return ConfigError(group, f"unknown option '{option}'",
                           did_you_mean(option, options) or f"add conf/{group}/{option}.yaml")

    key_match = _FULL_KEY.search(full)
    key = key_match.group(1) if key_match else "config"

    not_in = _NOT_IN_STRUCT.search(full)
    if not_in:
        from pipeline.config.validate import suggest_key

        return ConfigError(key, "unknown key", suggest_key(key.rpartition(".")[0], not_in.group(1)) or "remove it")

    convert = _CONVERT.search(full)
    if convert:
        value, kind = convert.groups()
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(kind, kind)
        return ConfigError(key, f"'{value}' is not {kind}", f"give {key}=<{kind}>")

    if _NOT_OPTIONAL.search(full):
        return ConfigError(key, "cannot be null", f"give {key} a value")
    if _NOT_A_LIST.search(full):
        return ConfigError(key, "expects a list", f"write it as {key}=[a,b] (quote it in the shell)")
    if _NOT_A_DICT.search(full):
        return ConfigError(key, "expects a mapping, not a single value", f"write it as {key}={{a: b}}")

    enum = _BAD_ENUM.search(full)
    if enum:
        value, options = enum.groups()
        opts = [o.strip() for o in options.split(",")]
        return ConfigError(key, f"'{value}' is not allowed", did_you_mean(value, opts))

    appended = _ALREADY_THERE.search(full)
    if appended:  # `+lora.r=8`: '+' adds a key the config does not have
        where = appended.group(1)
        return ConfigError(where, "is already in the config, and '+' adds a new key",
                           f"drop the '+' ({where}=...), or write ++{where}=... to set it either way")
    if "Could not override" in full or "Error merging override" in full or "Could not append" in full:
        return ConfigError(key, _cause_line(cause, text), "check the override's key and value")
    return None


def _cause_line(cause: BaseException | None, text: str) -> str:
    """The line that says what went wrong (OmegaConf puts it first, then full_key/object_type details)."""
    for candidate in (str(cause) if cause is not None else "", text):
        for line in candidate.splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key:", "object_type", "reference_type", "Could not override",
                                             "Error merging override", "To append")):
                return line.rstrip(".")
    return "invalid override"


def to_config_error(ex: BaseException) -> ConfigError | None:
    """The ConfigError behind an exception, if it is a user mistake we know how to explain."""
    seen = set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        if isinstance(ex, ConfigError):
            return ex
        ex = ex.__cause__ or ex.__context__
    return None


def first_line(ex: BaseException) -> str:
    """The first non-empty line of an exception's message, for one-line errors."""
    lines = [line.strip() for line in str(ex).splitlines() if line.strip()]
    return (lines[0] if lines else type(ex).__name__).rstrip(".")


def report_and_exit(error: ConfigError) -> None:
    """The one line (from the first process of a torchrun / accelerate launch only: every rank finds the same
    mistake), and the exit code."""
    if os.environ.get("RANK", "0") in ("", "0"):
        sys.stderr.write(error.line() + "\n")
        sys.stderr.flush()
    else:  # the launcher stops every process once one exits: the others wait for rank 0 to have said it
        import signal
        import time

        code = getattr(error, "exit_code", EXIT_USAGE)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))  # the launcher's stop ends the wait, silently
        time.sleep(RANK_ZERO_GRACE_S)
    sys.exit(getattr(error, "exit_code", EXIT_USAGE))


# one line per failed job of the running multirun, filled by `pipeline.cli.common.JobFailures`
FAILED_JOBS: list[str] = []
# what the running multirun does at its end (print and log its summary: `pipeline.outputs.sweep.SweepSummary`)
SWEEP_END: list[Callable[[], None]] = []


def install_hydra_error_handler() -> None:
    """Make Hydra print user mistakes as one line with exit code 2 instead of its own multi-line report; errors we
    do not recognise keep Hydra's own handling (`HYDRA_FULL_ERROR=1`: always)."""
    from pipeline.compat import wrap_hydra_error_reporting

    def handle(ex: Exception) -> None:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return
        error = to_config_error(ex) or _translate_hydra(ex)
        for end in SWEEP_END:  # the summary a sweep prints at its end, which Hydra skips after a failure
            end()
        if FAILED_JOBS:  # a sweep: every failed job, each with its own line, not only the first
            sys.stderr.write(f"{len(FAILED_JOBS)} job(s) failed:\n" + "\n".join(FAILED_JOBS) + "\n")
            sys.exit(getattr(error, "exit_code", EXIT_USAGE) if error is not None else 1)
        if error is not None:
            report_and_exit(error)

    wrap_hydra_error_reporting(handle)


def _translate_hydra(ex: BaseException) -> ConfigError | None:
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(ex, OverrideParseException):
        return _override_syntax_error(ex)
    if isinstance(ex, (HydraException, OmegaConfBaseException)):
        return translate_compose_error(ex)
    group = _GROUP_NOT_A_NAME.search(str(ex))
    if isinstance(ex, ValueError) and group:
        return _group_value_error()
    if isinstance(ex, OSError) and ex.filename:
        return _output_dir_error(ex)
    return None


def _output_dir_error(ex: OSError) -> ConfigError | None:
    """Hydra could not make the run (or sweep) directory: /proc/x, a read-only disk, a file in the way."""
    import traceback

    frames = [f.filename for f in traceback.extract_tb(ex.__traceback__) if not f.filename.endswith("pathlib.py")]
    if not frames or f"{os.sep}hydra{os.sep}" not in frames[-1]:
        return None  # not Hydra's own mkdir
    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv) else "hydra.run.dir"
    return ConfigError(key, f"cannot create {ex.filename}: {ex.strerror}",
                       f"point {key} (or name) at a directory you can write to")


_GROUP_NOT_A_NAME = re.compile(r"Config group override must be a string or a list")
_ALREADY_THERE = re.compile(r"Could not append to config\. An item is already at '([\w.]+)'")
_NEEDS_QUOTES = re.compile(r"[^\x00-\x7f]|~")  # characters Hydra's grammar takes only inside quotes
_OVERRIDE = re.compile(r"^[+~]*([\w./@-]+)=(.*)$")


def _command_line_overrides() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in map(_OVERRIDE.match, sys.argv[1:]) if m]


def _override_syntax_error(ex: Exception) -> ConfigError:
    """Hydra's grammar error ("no viable alternative at input '[q_proj'"), named by the override it is in."""
    problem = str(ex).splitlines()[0].rstrip(".")
    found = re.search(r"input '(.*)'", problem)
    culprit = next((key for key, value in _command_line_overrides() if found and found.group(1) in value), None)
    lexed = re.search(r"LexerNoViableAltException: ([^=]+)=(.*)\)?$", problem)
    if lexed and _NEEDS_QUOTES.search(lexed.group(2)):  # `name=~x`, `name=café`
        key, value = lexed.group(1).lstrip("+~"), lexed.group(2).rstrip(")")
        return ConfigError(key, f"'{value}' holds a character Hydra reads only inside quotes ('~' or one outside "
                           "ASCII)", f"quote the value, and the whole override in the shell: '{key}=\"{value}\"'")
    return ConfigError(culprit or "overrides", f"cannot parse the override ({problem})",
                       "close brackets and quotes, and quote the whole override in the shell: 'key=[a,b]'")


def _group_value_error() -> ConfigError:
    """`model=5`: a config group takes an option name, and Hydra only says 'Got int'."""
    from pipeline.config.resolvers import REPO

    conf = REPO / "conf"
    for key, value in _command_line_overrides():
        if (conf / key).is_dir() and not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
            options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
            return ConfigError(key, f"{value} is not an option name", did_you_mean(value, options))
    return ConfigError("overrides", "a config group was given a number or a list",
                       "give it an option name, e.g. model=tiny")
