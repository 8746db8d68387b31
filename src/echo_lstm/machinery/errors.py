"""How a run that cannot go on ends: one line on stderr and an exit code. A leaf module (stdlib only).

Every failure a user can cause or meet is one of these, so the entry points print one line and exit:

| exit | class           | when                                                        | line starts with |
|------|-----------------|-------------------------------------------------------------|------------------|
| 2    | ConfigError     | a bad setting, checkpoint, run dir or device: nothing ran   | `error: `        |
| 3    | Diverged        | the loss or the weights became NaN/inf; nothing bad saved   | `error: `        |
| 4    | WriteFailed     | a file could not be written (full disk, permissions)        | `error: `        |
| 5    | ProcessDied     | a DDP process of the run died                               | `error: `        |
| 130  | Stopped         | Ctrl-C (SIGINT) / 143 SIGTERM: a requested stop, not an error| `stopped `       |
| 0    | Finished        | resume= of a finished run: nothing to do, nothing changed   | `echo-lstm: `    |

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Any

USAGE, DIVERGED, WRITE_FAILED, PROCESS_DIED = 2, 3, 4, 5


class Raw(str):
    """A value as the user typed it (shown without quotes in a message)."""

    def __repr__(self) -> str:
        return str(self)


class EchoError(Exception):
    """A failure with a one-line message and an exit code (see the module docstring)."""

    exit_code = 1
    prefix = "error: "

    def line(self) -> str:
        return f"{self.prefix}{self}"


class ConfigError(EchoError, ValueError):
    """A user-facing mistake: one line naming the setting, the value and what is allowed."""

    exit_code = USAGE

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")

    def __reduce__(self) -> tuple:
        # Picklable with its own arguments: a joblib worker sends a failed job's error back to the sweep.
        return (ConfigError, (self.key, self.value, self.allowed))


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
    """A constructor's check of its own argument (the one home of its range): `name=value` refused in one line. The
    app names the whole setting (`data.batch_size`) wherever the class is configured (machinery/run.built)."""
    if not ok:
        raise ConfigError(name, value, allowed)


class Diverged(EchoError):
    """The loss or the weights became NaN or infinite: raised before anything of the bad state is saved."""

    exit_code = DIVERGED

    def __init__(self, step: int, what: str = "loss", kept: str = ""):
        self.step, self.what, self.kept = step, what, kept
        super().__init__(f"the {what} became NaN or infinite at step {step}: training diverged and was stopped"
                         + (f"; {kept}" if kept else ""))

    def __reduce__(self) -> tuple:
        return (Diverged, (self.step, self.what, self.kept))


class WriteFailed(EchoError):
    """A file of the run could not be written; names the file and the reason."""

    exit_code = WRITE_FAILED

    def __init__(self, path: Any, reason: str, note: str = ""):
        self.path, self.reason, self.note = str(path), reason, note
        super().__init__(f"could not write {path}: {reason}" + (f"; {note}" if note else ""))

    def __reduce__(self) -> tuple:
        return (WriteFailed, (self.path, self.reason, self.note))


class ProcessDied(EchoError):
    """Another process of a DDP run died; this one stopped too."""

    exit_code = PROCESS_DIED


class Stopped(EchoError):
    """A stop the user asked for (Ctrl-C, SIGTERM): not an error, but not a finished run either."""

    prefix = ""

    def __init__(self, signum: int, message: str):
        self.signum, self.message = signum, message
        self.exit_code = 128 + signum
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return (Stopped, (self.signum, self.message))


class Finished(EchoError):
    """Nothing to do: a finished run given to resume= is kept as it is (not an error: exit code 0)."""

    exit_code = 0
    prefix = "echo-lstm: "

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return (Finished, (self.message,))


class Escaped(BaseException):
    """An exception raised in a Hydra callback, carried past Hydra, which turns any Exception there into a warning and
    goes on (without the checks and the claim). A BaseException, as SystemExit: cli.run unwraps and reports it."""

    def __init__(self, error: BaseException):
        self.error = error
        super().__init__(error)


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
    import errno

    if isinstance(error, WriteFailed):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS,
                                                       errno.EIO):
        return WriteFailed(error.filename or where, os.strerror(error.errno))
    return None


def quiet_thread_disk_errors() -> None:
    """A writer thread (TensorBoard's) that hits a full disk dies with a traceback on stderr; the main thread gets
    the same error at its next write and reports it in one line. So print nothing for those threads."""
    import threading

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if disk_error(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def hydra_quote(value: str) -> str:
    """`value` as a Hydra override value: as is when plain, else single-quoted with quotes escaped."""
    import re

    if re.fullmatch(r"[\w/.\-:+@%]+", value):
        return value
    escaped = value.replace("'", "\\'")
    if escaped.endswith("\\"):  # a trailing backslash would escape the closing quote
        escaped += "\\"
    return f"'{escaped}'"


def relpath(path: Any, start: Any = None) -> str:
    """`os.path.relpath`, or the absolute path when the current dir was deleted under the run (relpath needs it)."""
    try:
        return os.path.relpath(path, start) if start is not None else os.path.relpath(path)
    except OSError:
        return os.path.abspath(path) if os.path.isabs(os.fspath(path)) else os.fspath(path)


def command(*args: str) -> str:
    """A command line a user can paste into a shell (each argument shell-quoted)."""
    return " ".join(shlex.quote(a) for a in args)


def report(error: EchoError, quiet: bool = False) -> int:
    """Print the error's one line (unless `quiet`: a DDP rank whose rank 0 speaks) and return its exit code."""
    if not quiet:
        print(error.line(), file=sys.stderr, flush=True)
    return error.exit_code
