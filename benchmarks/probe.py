"""The clocks of benchmarks/throughput.py: what a timed window holds (`Measure`) and the callbacks that read them.

- `Probe`, given to `train(cfg, callbacks=[probe])`: the steady-state window of (b) and the time spent in
  validation inside it, and when the first training batch started; as a `Measure`, as (a) reports its own.
- `FirstStepProbe`, added to a `python train.py` subprocess by a Hydra override
  (`+callbacks.bench_probe._target_=benchmarks.probe.FirstStepProbe`): writes the wall clock at `on_fit_start`
  and at the first training step as JSON to the file named by $ECHO_BENCH_PROBE.
- `cli_timings`: `python train.py` in subprocesses (start-up with FirstStepProbe, commands that must answer fast, a
  default run), read from that JSON and the run's `result.json`, never from its console.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
ENV = "ECHO_BENCH_PROBE"  # where FirstStepProbe writes its JSON


@dataclass(frozen=True)
class Clocks:
    """CPU time is far less disturbed than wall time by other processes on a shared machine; minor page faults
    show the allocator handing memory back and forth to the OS (echo_lstm.machinery.run.keep_freed_memory)."""

    wall: float
    cpu: float  # this process, all its threads
    faults: int

    @classmethod
    def now(cls) -> Clocks:
        return cls(time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measure:
    """One timed window of either path (benchmarks/baseline.py's loop or a Probe in `train()`)."""

    chunks: int
    seconds: float  # steady-state window, wall clock
    cpu: float  # the same window, CPU time of this process (all its threads)
    val_seconds: float = 0.0  # validation inside the window ((b) only), wall ...
    val_cpu: float = 0.0  # ... and CPU
    startup: float = 0.0  # (b): train() call to the first training batch
    faults: int = 0  # minor page faults in the window (validation included)

    @property
    def rate(self) -> float:
        """chunks/s, training only (like for like: (a) does no validation)."""
        return self.chunks / (self.seconds - self.val_seconds)

    @property
    def rate_all(self) -> float:
        """chunks/s, everything in the window."""
        return self.chunks / self.seconds

    @property
    def rate_cpu(self) -> float:
        """chunks per CPU second, training only."""
        return self.chunks / (self.cpu - self.val_cpu)


class Probe(pl.Callback):
    """The steady-state window of a `train()` run: from the end of `warmup_batches` training batches to the end
    of the last one. Validation is timed from `on_validation_start` up to the next training batch (or the epoch
    end), so the checkpoints saved when validation ends count as validation."""

    def __init__(self, warmup_batches: int = 1) -> None:
        self.warmup_batches = warmup_batches
        self.batches = 0
        self.first_batch_at: float | None = None
        self.start: Clocks | None = None
        self.step0 = 0
        self.end: Clocks | None = None
        self.step_end = 0
        self.val = [0.0, 0.0]  # wall, CPU: all validation so far in the window
        self.val_at_end = (0.0, 0.0)  # ... up to the last training batch
        self._val_started: Clocks | None = None

    def measure(self, called: float) -> Measure | None:
        """The window, with start-up from `called` (perf_counter when train() was called); None if the run
        ended before a timed batch."""
        if self.start is None or self.end is None or self.first_batch_at is None:
            return None
        return Measure(self.step_end - self.step0, self.end.wall - self.start.wall, self.end.cpu - self.start.cpu,
                       *self.val_at_end, startup=self.first_batch_at - called,
                       faults=self.end.faults - self.start.faults)

    def _close_validation(self) -> None:
        if self._val_started is not None:
            now = Clocks.now()
            self.val[0] += now.wall - self._val_started.wall
            self.val[1] += now.cpu - self._val_started.cpu
            self._val_started = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        self._close_validation()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_validation()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None and not trainer.sanity_checking:
            self._val_started = Clocks.now()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches < self.warmup_batches:
            return
        sync(pl_module.device)
        now = Clocks.now()
        if self.batches == self.warmup_batches:
            self.start, self.step0 = now, trainer.global_step
        else:
            self.end, self.step_end = now, trainer.global_step
            self.val_at_end = (self.val[0], self.val[1])


class FirstStepProbe(pl.Callback):
    """Writes {"fit_start": t, "first_step": t} (time.time()) to $ECHO_BENCH_PROBE at the first training step:
    with the time the parent started the process, the start-up cost of `python train.py`."""

    def __init__(self) -> None:
        self.fit_start: float | None = None
        self.done = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.time()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.done:
            return
        self.done = True
        first_step = time.time()
        path = os.environ.get(ENV)
        if path:
            with open(path, "w") as f:
                json.dump({"fit_start": self.fit_start, "first_step": first_step}, f)


# ---------------------------------------------------------------------------------------------- train.py start-up
@dataclass
class Command:
    """`python train.py ARGS`, timed; `error`: its last line of output when its exit was not the expected one (and
    the one `error:` line of an expected refusal)."""

    command: str
    expected_exit: int
    exit: int
    seconds: list[float]  # each run's wall time
    median_s: float
    error: str | None


def train_py(*args: str, expected: int = 0, runs: int = 1, env: dict[str, str] | None = None) -> Command:
    seconds = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, timeout=600)
        seconds.append(time.perf_counter() - t)
    last = ((proc.stderr or proc.stdout).strip().splitlines() or [""])[-1]
    shown = " ".join(["python train.py", *(x for x in args if not x.startswith(("hydra.", "+callbacks.bench")))])
    return Command(shown, expected, proc.returncode, seconds, statistics.median(seconds),
                   last if proc.returncode != expected or expected else None)


@dataclass
class Cli:
    first_step: Command  # trainer.max_steps=64 (two batches, one validation) with FirstStepProbe
    to_fit_start_s: float | None  # process start -> Trainer.fit start (FirstStepProbe's JSON)
    to_first_step_s: float | None  # process start -> first training step
    quick: list[Command]  # must answer fast (--help, --cfg job, a config error): median of up to 3 runs
    default_run: Command  # `python train.py`, only the run dir moved
    default_result: dict[str, Any]  # its result.json: step, reached, stop_reason, seconds (train()'s own)


def cli_timings(tmp: Path, repeats: int) -> Cli:
    """`python train.py` in subprocesses, read from FirstStepProbe's JSON and the run's result.json only."""
    marks = tmp / "first-step.json"
    started = time.time()
    first = train_py("trainer.max_steps=64", f"hydra.run.dir={tmp / 'first-step'}",
                     f"+callbacks.bench_probe._target_={__name__}.FirstStepProbe", env={ENV: str(marks)})
    t = json.loads(marks.read_text()) if marks.is_file() else {"fit_start": None, "first_step": None}
    since = {k: v - started if v is not None else None for k, v in t.items()}
    quick = [train_py(*args, f"hydra.run.dir={tmp / 'cli'}", expected=rc, runs=min(repeats, 3))
             for args, rc in ((["--help"], 0), (["--cfg", "job"], 0), (["layers=0"], 2))]
    default = train_py(f"hydra.run.dir={tmp / 'default'}")
    result = tmp / "default" / "result.json"
    result = json.loads(result.read_text()) if result.is_file() else {}
    keep = ("step", "reached", "stop_reason", "seconds")
    return Cli(first, since["fit_start"], since["first_step"], quick, default, {k: result.get(k) for k in keep})
