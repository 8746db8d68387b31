"""How a run that cannot go on ends: one line on stderr and an exit code (the table in README.md's "Nothing lost").
Anything else is a bug and keeps its traceback. A leaf module (stdlib only).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, fields
from typing import Any


class Raw(str):
    """A value as the user typed it (shown without quotes in a message)."""

    def __repr__(self) -> str:
        return str(self)


class EchoError(Exception):
    """A failure with a one-line message and an exit code. Each kind is a dataclass of its fields, made again from
    them when unpickled (a joblib worker sends a failed job's error back to the sweep)."""

    exit_code = 1
    prefix = "error: "

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))

    def line(self) -> str:
        return f"{self.prefix}{self}"


@dataclass(eq=False)
class ConfigError(EchoError, ValueError):
    """A user-facing mistake: one line naming the setting, the value and what is allowed."""

    key: str
    value: Any
    allowed: str
    exit_code = 2

    def __str__(self) -> str:
        return f"{self.key}={self.value!r} is invalid: {self.allowed}"


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
    """A constructor's check of its own argument (the one home of its range): `name=value` refused in one line. The
    app names the whole setting (`data.batch_size`) wherever the class is configured (machinery/run.built)."""
    if not ok:
        raise ConfigError(name, value, allowed)


@dataclass(eq=False)
class Diverged(EchoError):
    """The loss or the weights became NaN or infinite: raised before anything of the bad state is saved."""

    step: int
    what: str = "loss"
    kept: str = ""
    exit_code = 3

    def __str__(self) -> str:
        kept = f"; {self.kept}" if self.kept else ""
        return f"the {self.what} became NaN or infinite at step {self.step}: training diverged and was stopped{kept}"


@dataclass(eq=False)
class WriteFailed(EchoError):
    """A file of the run could not be written; names the file and the reason."""

    path: Any
    reason: str
    note: str = ""
    exit_code = 4

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.reason}" + (f"; {self.note}" if self.note else "")


@dataclass(eq=False)
class ProcessDied(EchoError):
    """Another process of a DDP run died; this one stopped too."""

    message: str
    exit_code = 5


@dataclass(eq=False)
class Stopped(EchoError):
    """A stop the user asked for (Ctrl-C, SIGTERM): not an error, but not a finished run either."""

    signum: int
    message: str
    prefix = ""

    def __post_init__(self) -> None:
        self.exit_code = 128 + self.signum


@dataclass(eq=False)
class Finished(EchoError):
    """Nothing to do: a finished run given to resume= is kept as it is (not an error: exit code 0)."""

    message: str
    exit_code = 0
    prefix = "echo-lstm: "


@dataclass(eq=False)
class Escaped(BaseException):
    """An exception raised in a Hydra callback, carried past Hydra, which turns any Exception there into a warning and
    goes on (without the checks and the claim). A BaseException, as SystemExit: cli.run unwraps and reports it."""

    error: BaseException


# After these, a run that has written no checkpoint leaves nothing (rundir.Claim.release); a diverged run keeps its
# dir, whose curves show what happened.
LEAVES_NOTHING = (ConfigError, WriteFailed, Stopped, Finished)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def disk_error(error: BaseException, where: str = "an output file") -> WriteFailed | None:
    """An OSError from writing (full disk, quota, permissions, read-only) as WriteFailed naming the file (else
    `where`: the writer did not say), or None for any other error."""
    if isinstance(error, WriteFailed):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS,
                                                       errno.EIO):
        return WriteFailed(error.filename or where, os.strerror(error.errno))
    return None


def hydra_quote(value: str) -> str:
    """`value` as a Hydra override value: as is when plain, else single-quoted with quotes escaped."""
    if re.fullmatch(r"[\w/.\-:+@%]+", value):
        return value
    escaped = value.replace("'", "\\'")
    if escaped.endswith("\\"):  # a trailing backslash would escape the closing quote
        escaped += "\\"
    return f"'{escaped}'"


def relpath(path: Any, start: Any = None) -> str:
    """`os.path.relpath`, or the absolute path when the current dir was deleted under the run (relpath needs it)."""
    try:
        return os.path.relpath(path, start)
    except OSError:
        return os.path.normpath(path) if os.path.isabs(path) else os.fspath(path)


def command(*args: str) -> str:
    """A command line a user can paste into a shell (each argument shell-quoted)."""
    return " ".join(shlex.quote(a) for a in args)


def report(error: EchoError, quiet: bool = False) -> int:
    """Print the error's one line (unless `quiet`: a DDP rank whose rank 0 speaks) and return its exit code."""
    if not quiet:
        print(error.line(), file=sys.stderr, flush=True)
    return error.exit_code
