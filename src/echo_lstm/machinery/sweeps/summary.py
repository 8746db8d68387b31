"""The end of a multirun: one table of every job (`summary.md`, `summary.csv`), a picture (`summary.png`), and the
sweep's outcome (one `error:` line and a non-zero exit when a job failed).

A Hydra callback (`conf/hydra/default.yaml`), light on purpose (no torch): Hydra instantiates it in every run,
and it does nothing outside a multirun.

How it stays correct when jobs fail or run in other processes:
* A job's metrics come from the job itself: `train.py` returns a `JobResult`, a float (the optimized metric,
  for Hydra's sweepers) that also carries every final metric, the steps, and for a job that failed in a known
  way (a bad setting, divergence ...) its one-line reason and exit code (its value is then NaN).
* `on_job_end` runs in the process that ran the job (the main process, a joblib worker, a cluster node). It
  writes the job's record to `<sweep dir>/.jobs/<num>.json` and rewrites the table from every record there,
  under a file lock: the table is complete after every job, whatever happens to the sweep afterwards. The
  picture is drawn when the sweep ends (or at exit, if a job's exception ends it).
* A job that raised (a bug) is recorded as failed with its exception; Hydra then re-raises it once its batch of
  jobs is done, and the table is printed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from echo_lstm import metrics as registry
from echo_lstm.machinery.errors import command, hydra_quote, relpath, signal_name
from echo_lstm.machinery.sweeps.naming import job_values, split_override

RECORDS = ".jobs"


class JobResult(float):
    """What a job returns: a float (the optimized metric; NaN for a failed job) with the run's final metrics."""

    metrics: dict[str, float]
    status: str
    reason: str
    exit_code: int
    step: int | None

    def __new__(cls, value: float, metrics: dict[str, float] | None = None, status: str = "completed",
                reason: str = "", exit_code: int = 0, step: int | None = None) -> JobResult:
        result = super().__new__(cls, value)
        result.metrics, result.status, result.reason = dict(metrics or {}), status, reason
        result.exit_code, result.step = exit_code, step
        return result

    def __reduce__(self) -> tuple:  # picklable: joblib workers send results back
        return (JobResult, (float(self), self.metrics, self.status, self.reason, self.exit_code, self.step))

    @classmethod
    def failed(cls, reason: str, exit_code: int) -> JobResult:
        return cls(failed_value(), status="failed", reason=reason, exit_code=exit_code)


def failed_value() -> float:
    """What a failed job returns to the sweeper: NaN, but for Optuna the worst value of its direction, which it
    takes (a NaN makes hydra-optuna-sweeper tell the trial twice and abort the whole search)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    except Exception:
        sweeper = None
    if sweeper is None or "Optuna" not in str(sweeper.get("_target_", "")):
        return math.nan
    return -math.inf if str(sweeper.get("direction", "minimize")).lower().endswith("maximize") else math.inf


@dataclass
class JobRecord:
    job: int
    status: str  # completed | failed
    overrides: list[str]
    run: str  # the job's dir, relative to the sweep dir ("" if it was removed: a refused job)
    optimized_metric: str
    direction: str  # maximize | minimize
    seconds: float
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    step: int | None = None
    reason: str = ""
    exit_code: int = 0

    def values(self) -> dict[str, str]:
        return dict(split_override(o) for o in self.overrides)


def direction_of(config: DictConfig, metric: str) -> str:
    """'maximize' or 'minimize': the sweeper's direction if it has one (Optuna), else the metric's."""
    direction = None
    with contextlib.suppress(Exception):
        direction = config.hydra.sweeper.get("direction")
    if direction is not None and not isinstance(direction, str) and hasattr(direction, "__len__"):
        direction = direction[0] if len(direction) else None
    text = str(getattr(direction, "name", direction) or "").lower()
    if "max" in text or "min" in text:
        return "maximize" if "max" in text else "minimize"
    return "minimize" if registry.find(metric) and registry.better(metric) == "min" else "maximize"


def format_value(value: Any, column: str = "") -> str:
    """For people: steps as integers, seconds to 0.1 s, other numbers to 4 decimals (3 digits if tiny)."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            return "never" if column == registry.STEPS_TO_ECHO and value == math.inf else str(value)
        if "step" in column or column in ("rank", "job"):
            return str(round(value))
        if column == "seconds":
            return f"{value:.1f}"
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """An aligned Markdown table (readable as plain text too)."""
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ranked(records: list[JobRecord]) -> list[JobRecord]:
    """Best first by the optimized metric; equal values by fewer steps to learn the echo; failed jobs last."""

    def key(r: JobRecord) -> tuple:
        v = r.value
        missing = v is None or not math.isfinite(v)
        score = 0.0 if missing else (v if r.direction == "minimize" else -v)
        steps = r.metrics.get(registry.STEPS_TO_ECHO, math.inf)
        steps = math.inf if steps is None or math.isnan(steps) else steps
        return (r.status != "completed", missing, score, steps, r.job)

    return sorted(records, key=key)


@dataclass
class Summary:
    """The table of a sweep: keys that vary (columns), keys every job shares (above the table), rows best first."""

    records: list[JobRecord]
    metric: str
    direction: str
    varying: list[str]
    common: dict[str, str]

    @classmethod
    def of(cls, records: list[JobRecord]) -> Summary:
        metric = next((r.optimized_metric for r in records if r.optimized_metric), "value")
        direction = next((r.direction for r in records), "maximize")
        keys = list(dict.fromkeys(k for r in records for k in r.values()))
        values = {k: {r.values().get(k, "") for r in records} for k in keys}
        varying = [k for k in keys if len(values[k]) > 1 or len(records) == 1]
        common = {k: next(iter(values[k])) for k in keys if k not in varying}
        return cls(ranked(records), metric, direction, varying, common)

    def columns(self) -> list[str]:
        shown = [m for m in registry.SUMMARY if m != self.metric]
        return ["rank", "job", "status", *self.varying, self.metric, *shown, "step", "seconds", "run", "reason"]

    def rows(self) -> list[list[Any]]:
        rows, rank = [], 0
        for r in self.records:
            rank += r.status == "completed"
            values = r.values()
            shown = [r.metrics.get(m) for m in registry.SUMMARY if m != self.metric]
            rows.append([rank if r.status == "completed" else "", r.job, r.status,
                         *[values.get(k, "") for k in self.varying], r.value, *shown, r.step, r.seconds, r.run,
                         r.reason])
        return rows

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*self.columns()[:3], *self.common, *self.columns()[3:]])
        for row in self.rows():
            cells = [*row[:3], *self.common.values(), *row[3:]]
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in cells])
        return out.getvalue()

    def markdown(self, sweep_dir: Path, picture: bool) -> str:
        header, rows = self.columns(), self.rows()
        keep = [i for i, name in enumerate(header) if name != "reason" or any(row[i] for row in rows)]
        shown_header = [f"{h} ({self.direction[:3]})" if h == self.metric else h for h in header]
        table = markdown_table([shown_header[i] for i in keep], [[format_value(row[i], header[i]) for i in keep]
                                                                 for row in rows])
        failed = sum(r.status != "completed" for r in self.records)
        title = (f"{len(self.records)} jobs ({failed} failed), sorted by {self.metric} ({self.direction}), "
                 f"then by fewer {registry.STEPS_TO_ECHO}.")
        if self.common:
            title += " Common overrides: " + " ".join(f"{k}={v}" for k, v in self.common.items()) + "."
        title += f" TensorBoard: `tensorboard --logdir {relpath(sweep_dir)}`."
        image = "\n\n![the optimized metric and steps to echo against the swept values](summary.png)" if picture else ""
        return f"{title}\n\n{table}{image}\n"


class SweepSummary(Callback):
    """See the module docstring. `print_table`: print the table when the sweep ends."""

    def __init__(self, print_table: bool = True):
        self.print_table = print_table
        self._sweep_dir: Path | None = None
        self._started: dict[int, float] = {}
        self._done = False

    # ------------------------------------------------------------------ Hydra hooks
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._done = False
        atexit.register(self._at_exit)  # a job that raised ends the sweep by re-raising its exception

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from echo_lstm.machinery.sweeps import stop

        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        failed = self._report()
        signum = stop.requested(self._sweep_dir)
        if signum is not None:
            self.end_stopped(self._sweep_dir, signum)
        if failed:  # one line and an exit code, as for a single run (the reasons are in the table above)
            first = failed[0]
            label = " ".join(job_values(first.overrides)) or "defaults"
            print(f"error: {len(failed)} of {len(self._records())} jobs failed (summary.md has every reason); "
                  f"job {first.job} ({label}): {first.reason}", file=sys.stderr, flush=True)
            raise SystemExit(first.exit_code or 1)

    @classmethod
    def end_stopped(cls, sweep_dir: Path, signum: int) -> None:
        """A sweep stopped by Ctrl-C / SIGTERM (sweeps/stop.py): the summary, and what was kept and how to go on,
        truthfully (the job dirs that hold a checkpoint); exits with the stop's code."""
        sweep_dir = Path(sweep_dir).resolve()
        if not sweep_dir.is_dir():  # no job had trained: the sweep left nothing
            print(f"stopped by {signal_name(signum)}; nothing was kept", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        with contextlib.suppress(Exception), file_lock(sweep_dir / RECORDS / "lock"):
            cls().write_summary(sweep_dir)
        records = {r.job: r for r in cls.read_records(sweep_dir)}
        kept = sorted(p.parent.parent for p in sweep_dir.glob("*/checkpoints/last.ckpt"))
        done = sum(r.status == "completed" for r in records.values())
        stopped = [p for p in kept if not any(r.status == "completed" and r.run == p.name for r in records.values())]
        go_on = "; continue with: " + "; ".join(
            command("python", "train.py", f"resume={hydra_quote(relpath(p))}") for p in stopped) if stopped else ""
        waiting = sum(r.status == "not started" for r in records.values())
        print(f"stopped by {signal_name(signum)}: {done} of {len(records)} jobs finished, {len(stopped)} stopped "
              f"with a checkpoint kept, {waiting} not started (summary.md lists them){go_on}",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_multirun(config):
            self._started[int(config.hydra.job.num)] = time.time()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from echo_lstm.machinery.distributed import is_secondary_rank

        if not is_multirun(config) or is_secondary_rank():  # (srun's rank > 0 of a SLURM job: rank 0 records it)
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        record = self.job_record(config, job_return)
        jobs = sweep_dir / RECORDS
        jobs.mkdir(parents=True, exist_ok=True)
        write_atomic(jobs / f"{record.job:06d}.json", json.dumps(asdict(record), indent=1))
        with file_lock(jobs / "lock"):
            self.write_summary(sweep_dir)

    # ------------------------------------------------------------------ records
    def job_record(self, config: DictConfig, job_return: Any) -> JobRecord:
        from hydra.core.utils import JobStatus

        num = int(config.hydra.job.num)
        run_dir = Path(str(config.hydra.runtime.output_dir))
        metric = str(config.get("optimized_metric", ""))
        record = JobRecord(job=num, status="completed", overrides=list(job_return.overrides or []),
                           run=relpath(run_dir, Path(str(config.hydra.sweep.dir))) if run_dir.is_dir() else "",
                           optimized_metric=metric, direction=direction_of(config, metric),
                           seconds=round(time.time() - self._started.pop(num, time.time()), 2))
        if job_return.status == JobStatus.COMPLETED:
            result = job_return.return_value
            if isinstance(result, JobResult):
                record.status, record.reason, record.exit_code = result.status, result.reason, result.exit_code
                record.metrics, record.step = result.metrics, result.step
            record.value = float(result) if isinstance(result, (int, float)) else None
        else:  # the job raised: a bug, with its traceback on the console
            record.status, record.exit_code = "failed", 1
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # reading it also prints a line we do not want
                    _ = job_return.return_value
            except BaseException as error:
                text = f"{type(error).__name__}: {error}".strip()
                record.reason = text.splitlines()[0][:300]
        return record

    @staticmethod
    def read_records(sweep_dir: Path) -> list[JobRecord]:
        records = []
        for path in sorted((sweep_dir / RECORDS).glob("*.json")):
            try:
                records.append(JobRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # being written by another process: the next rewrite has it
        return records

    def _records(self) -> list[JobRecord]:
        return self.read_records(self._sweep_dir) if self._sweep_dir else []

    def write_summary(self, sweep_dir: Path, picture: bool = False) -> str:
        """Rewrite summary.csv and summary.md from every record, and with `picture` summary.png (matplotlib: ~1 s,
        so once, when the sweep ends, not after every job); returns the Markdown."""
        records = self.read_records(sweep_dir)
        if not records:
            return ""
        summary = Summary.of(records)
        write_atomic(sweep_dir / "summary.csv", summary.csv())
        if picture:
            picture = self._plot(summary, sweep_dir)
        text = summary.markdown(sweep_dir, picture or (sweep_dir / "summary.png").is_file())
        write_atomic(sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir.name}\n\n{text}")
        return text

    @staticmethod
    def _plot(summary: Summary, sweep_dir: Path) -> bool:
        from echo_lstm.machinery.viz.summary_plot import plot_sweep_summary

        jobs = [{"job": r.job, "status": r.status, "values": r.values(),
                 "metrics": {**r.metrics, summary.metric: r.value}} for r in summary.records]
        try:
            return plot_sweep_summary(jobs, summary.varying, summary.metric, sweep_dir / "summary.png",
                                      direction=summary.direction, title=sweep_dir.name) is not None
        except Exception as error:  # a picture must never fail a sweep
            print(f"warning: summary.png could not be drawn: {error}", file=sys.stderr)
            return False

    def _report(self) -> list[JobRecord]:
        """Write and print the summary (once); returns the failed jobs."""
        if self._done or self._sweep_dir is None or not (self._sweep_dir / RECORDS).is_dir():
            return []
        self._done = True
        with file_lock(self._sweep_dir / RECORDS / "lock"):
            text = self.write_summary(self._sweep_dir, picture=True)
        if self.print_table and text:
            where = relpath(self._sweep_dir)
            print(f"\nSweep summary ({where}/summary.md, .csv, .png): {text}", flush=True)
        return [r for r in ranked(self._records()) if r.status != "completed"]

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._report()


def is_multirun(config: DictConfig) -> bool:
    try:
        return str(config.hydra.mode).upper().endswith("MULTIRUN")
    except Exception:
        return False


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class file_lock:
    """An exclusive advisory lock on a file (POSIX); a no-op where fcntl is missing."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> file_lock:
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
