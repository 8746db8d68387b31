"""Ctrl-C / SIGTERM / SIGHUP of a sweep: every job ends within seconds, what was kept is said truthfully, the
summary is written.

The first signal to the sweep's process writes `<sweep dir>/.jobs/stop` (the signal's number). A running job sees
it after its current training batch, or gets the terminal's Ctrl-C itself, and stops as a single run does (its
`last.ckpt` saved: machinery/graceful_stop.py), recorded `stopped`; a job that starts after it is recorded `not
started` and leaves no dir; the sweep then ends as usual, with the stop's exit code. A second signal kills the
workers and exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from echo_lstm.machinery.errors import signal_name
from echo_lstm.machinery.rundir import write_file

MARKER = Path(".jobs") / "stop"
_signals = 0  # stop signals the sweep's process has had


def request(sweep_dir: Path, signum: int) -> None:
    path = Path(sweep_dir) / MARKER
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # the first stop's signal is the sweep's
            write_file(path, f"{signum}\n")


def requested(sweep_dir: Path | str | None) -> int | None:
    """The signal that stopped this sweep, or None."""
    try:
        return int((Path(sweep_dir) / MARKER).read_text().strip()) if sweep_dir is not None else None
    except (OSError, ValueError):
        return None


def on_signal(sweep_dir: Path, signum: int) -> None:
    """The sweep process's handler: the first signal asks every job to stop; a second kills the workers (joblib's
    loky workers and their resource tracker: this process's children, from Linux /proc) and exits at once.
    (Counted here: a worker that got the same Ctrl-C may have written the marker first.)"""
    global _signals
    _signals += 1
    if _signals == 1:
        request(sweep_dir, signum)
        say(f"stopping the sweep ({signal_name(signum)}): its running jobs save and stop; Ctrl-C again to stop at once")
        return
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    say(f"stopped by {signal_name(signum)} at once; job dirs with a checkpoint are kept in {sweep_dir} "
        "(python train.py resume=<job dir>)")
    os._exit(128 + signum)


def say(line: str) -> None:
    with contextlib.suppress(OSError):  # (SIGHUP: the terminal may be gone)
        print(line, file=sys.stderr, flush=True)


def record_in_worker(sweep_dir: Path) -> None:
    """In a joblib worker, from its first job on: a stop signal is recorded for the sweep (the running job then
    stops at its next batch), never a KeyboardInterrupt or a death between jobs that would fail the whole sweep."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda s, frame: request(sweep_dir, s))
