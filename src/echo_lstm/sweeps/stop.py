"""Ctrl-C / SIGTERM of a sweep: every job ends within seconds, what was kept is said truthfully, the summary is
written.

The first signal writes `<sweep dir>/.jobs/stop` (the signal's number). A running job stops as a single run does
(its batch finished, `last.ckpt` saved) and is recorded `stopped`; a job that starts after it is recorded `not
started` and leaves no dir; the sweep then ends as usual (its summary) with the stop's exit code. In a joblib sweep
the parent also passes the signal on to its worker processes (a `kill` of the parent alone reaches them) and, at a
second Ctrl-C, kills them before it exits, so no worker outlives the sweep.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

MARKER = Path(".jobs") / "stop"


def request(sweep_dir: Path, signum: int) -> None:
    path = Path(sweep_dir) / MARKER
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            from echo_lstm.rundir import write_file

            write_file(path, f"{signum}\n")


def requested(sweep_dir: Path) -> int | None:
    """The signal that stopped this sweep, or None."""
    try:
        return int((Path(sweep_dir) / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def workers() -> list[int]:
    """This process's live child processes (joblib's loky workers and their resource tracker; Linux /proc)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return sorted(pid for pid in pids if _alive(pid))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie
    except (OSError, IndexError):
        return False


def signal_workers(signum: int) -> None:
    for pid in workers():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def kill_workers() -> None:
    signal_workers(signal.SIGKILL)
