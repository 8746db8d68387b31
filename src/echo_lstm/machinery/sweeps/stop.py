"""Ctrl-C / SIGTERM / SIGHUP of a sweep: every job ends within seconds, what was kept is said truthfully, the
summary is written.

The first signal to the sweep's process writes `<sweep dir>/.jobs/stop` (the signal's number; `on_signal`). A
running job sees it after its current training batch, or gets the terminal's Ctrl-C itself, and stops as a single
run does (its `last.ckpt` saved; machinery/graceful_stop.py), recorded `stopped`; a job that starts after it is
recorded `not started` and leaves no dir; the sweep then ends as usual (its summary) with the stop's exit code. A
joblib worker takes these signals from its first job on (`record_in_worker`), so a Ctrl-C between jobs does not kill
it (a dead worker would fail the whole sweep). A second signal kills the workers and exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

MARKER = Path(".jobs") / "stop"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_signals = 0  # stop signals the sweep's process has had


def request(sweep_dir: Path, signum: int) -> None:
    path = Path(sweep_dir) / MARKER
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            from echo_lstm.machinery.rundir import write_file

            write_file(path, f"{signum}\n")


def requested(sweep_dir: Path | str | None) -> int | None:
    """The signal that stopped this sweep, or None."""
    if sweep_dir is None:
        return None
    try:
        return int((Path(sweep_dir) / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def on_signal(sweep_dir: Path, signum: int) -> None:
    """The sweep process's handler: the first signal asks every job to stop; a second stops at once. (Counted here:
    a worker that got the same Ctrl-C may have written the marker first.)"""
    global _signals
    _signals += 1
    if _signals == 1:
        request(sweep_dir, signum)
        with contextlib.suppress(OSError):
            print(f"stopping the sweep ({signal.Signals(signum).name}): its running jobs save and stop; Ctrl-C "
                  "again to stop at once", file=sys.stderr, flush=True)
        return
    kill_workers()
    with contextlib.suppress(OSError):
        print(f"stopped by {signal.Signals(signum).name} at once; job dirs with a checkpoint are kept in {sweep_dir} "
              "(python train.py resume=<job dir>)", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def record_in_worker(sweep_dir: Path) -> None:
    """In a joblib worker: a stop signal is recorded for the sweep (the running job then stops at its next batch),
    never a KeyboardInterrupt or a death that would fail the sweep."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, lambda s, frame: request(sweep_dir, s))


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


def kill_workers() -> None:
    for pid in workers():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
