"""A Hydra Callback that sums up a multirun: one table of every job's overrides and final metrics.

Registered in `conf/hydra/default.yaml` (`hydra.callbacks.sweep_summary`). Light on purpose (no torch):
Hydra instantiates it in every run, and it does nothing outside a multirun.

How it stays correct when jobs fail or run in other processes
-------------------------------------------------------------
* `on_job_end` runs in the process that ran the job (the main process for the basic launcher, a worker for
  joblib, a cluster node for submitit). It writes the job's record to `<sweep dir>/.jobs/<num>.json` and then,
  under a file lock, rewrites `summary.csv` and `summary.md` from every record there. So the files are
  complete after every job, whatever happens to the sweep afterwards.
* A failed job is recorded as failed, with its exception as the reason. Hydra's sweepers re-raise a failed
  job's exception once its batch is done (all jobs of a basic or joblib sweep are one batch), so the sweep
  exits with status 1 and `on_multirun_end` never runs: the table is then printed at exit (`atexit`),
  after Hydra's error message.
* Final metrics are the last value of each scalar in the job's TensorBoard event files (the run dir), the
  optimized metric is the value the job returned, the step is the last step logged.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

DEFAULT_METRICS = ("train/steps_to_echo", "val/boundary_acc", "val/acc", "val/loss", "train/loss")
RECORDS = ".jobs"
MINIMIZED = re.compile(r"loss|step|error|time|seconds", re.IGNORECASE)


def is_multirun(config: DictConfig) -> bool:
    try:
        return str(config.hydra.mode).upper().endswith("MULTIRUN")
    except Exception:
        return False


def last_scalars(log_dir: Path) -> tuple[dict[str, float], int | None]:
    """Last value of every scalar tag in the event files directly under log_dir, and the last step."""
    if not any(log_dir.glob("events.out.tfevents.*")):
        return {}, None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    quiet = logging.getLogger("tensorboard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # not its INFO chatter ("No path found after ...") in the job's log
    try:
        acc.Reload()
    finally:
        quiet.setLevel(level)
    values, last_step = {}, None
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        if events:
            values[tag] = float(events[-1].value)
            step = max(e.step for e in events)
            last_step = step if last_step is None else max(last_step, step)
    return values, last_step


def direction_of(config: DictConfig, metric: str) -> str:
    """'minimize' or 'maximize': the sweeper's direction if it has one (Optuna), else from the name."""
    try:
        direction = config.hydra.sweeper.get("direction")
    except Exception:
        direction = None
    if direction is not None:
        if not isinstance(direction, (str, int)) and hasattr(direction, "__len__"):
            direction = direction[0] if len(direction) else None
        if direction is not None:
            text = str(getattr(direction, "name", direction)).lower()
            if "max" in text:
                return "maximize"
            if "min" in text:
                return "minimize"
    return "minimize" if MINIMIZED.search(metric) else "maximize"


def format_value(value: Any, column: str = "") -> str:
    """For people: steps as integers, seconds to 0.1 s, other metrics to 4 decimals (3 digits if tiny)."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if "step" in column or column in ("rank", "job") or (value.is_integer() and "seconds" not in column
                                                                and abs(value) >= 2):
            return str(round(value))
        if "seconds" in column:
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


class SweepSummary(Callback):
    """See the module docstring. `metrics`: the scalar tags shown; `mode`: auto | minimize | maximize."""

    def __init__(self, metrics: list[str] | None = None, mode: str = "auto", print_table: bool = True):
        self.metrics = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
        if mode not in ("auto", "minimize", "maximize", "min", "max"):
            raise ValueError(f"mode={mode!r}: must be auto, minimize or maximize")
        self.mode = mode
        self.print_table = print_table
        self._sweep_dir: Path | None = None
        self._started: dict[int, float] = {}
        self._printed = False

    # ------------------------------------------------------------------ Hydra hooks
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._printed = False
        atexit.register(self._at_exit)  # the sweep may end by re-raising a failed job's exception

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._report()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_multirun(config):
            self._started[int(config.hydra.job.num)] = time.time()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not is_multirun(config):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        record = self.job_record(config, job_return)
        jobs = sweep_dir / RECORDS
        jobs.mkdir(parents=True, exist_ok=True)
        write_atomic(jobs / f"{record['job']:06d}.json", json.dumps(record, indent=1))
        with file_lock(jobs / "lock"):
            self.write_summary(sweep_dir)

    # ------------------------------------------------------------------ records
    def job_record(self, config: DictConfig, job_return: Any) -> dict[str, Any]:
        from hydra.core.utils import JobStatus

        num = int(config.hydra.job.num)
        run_dir = Path(str(config.hydra.runtime.output_dir))
        failed = job_return.status != JobStatus.COMPLETED
        record: dict[str, Any] = {
            "job": num,
            "status": "failed" if failed else "completed",
            "overrides": list(job_return.overrides or []),
            "run": os.path.relpath(run_dir, Path(str(config.hydra.sweep.dir))),
            "run_exists": run_dir.is_dir(),
            "optimized_metric": str(config.get("optimized_metric", "")),
            "direction": self.mode_for(config),
            "seconds": round(time.time() - self._started.pop(num, time.time()), 2),
            "reason": "",
            "value": None,
            "metrics": {},
            "step": None,
        }
        if failed:
            error = job_return._return_value
            text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
            record["reason"] = text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
        else:
            try:
                record["value"] = float(job_return.return_value)
            except (TypeError, ValueError):
                record["value"] = None
        try:
            record["metrics"], record["step"] = last_scalars(run_dir)
        except Exception as error:  # a summary must never fail a job
            record["reason"] = (record["reason"] + f"; metrics unreadable: {error}").lstrip("; ")
        return record

    def mode_for(self, config: DictConfig) -> str:
        if self.mode in ("min", "minimize"):
            return "minimize"
        if self.mode in ("max", "maximize"):
            return "maximize"
        return direction_of(config, str(config.get("optimized_metric", "")))

    @staticmethod
    def read_records(sweep_dir: Path) -> list[dict[str, Any]]:
        records = []
        for path in sorted((sweep_dir / RECORDS).glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # being written by another process: the next rewrite has it
        return records

    # ------------------------------------------------------------------ the table
    def table(self, records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]], str, str, int]:
        """(header, rows, optimized metric, direction, number of override columns after the first three);
        rows sorted best first, failed jobs last."""
        metric = next((r["optimized_metric"] for r in records if r["optimized_metric"]), "value")
        direction = next((r["direction"] for r in records), "maximize")
        keys: list[str] = []
        for r in records:
            for o in r["overrides"]:
                key = o.split("=", 1)[0]
                if key not in keys:
                    keys.append(key)
        shown = [m for m in self.metrics if m != metric]

        def sort_key(r: dict[str, Any]) -> tuple:
            v = r["value"]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            score = 0.0 if missing else (v if direction == "minimize" else -v)
            return (r["status"] != "completed", missing, score, r["job"])

        header = ["rank", "job", "status", *keys, metric, *shown, "step", "seconds",
                  "run", "reason"]
        rows = []
        for rank, r in enumerate(sorted(records, key=sort_key), start=1):
            values = dict(o.split("=", 1) if "=" in o else (o, "") for o in r["overrides"])
            rows.append([
                rank if r["status"] == "completed" else "",
                r["job"],
                r["status"],
                *[values.get(k, "") for k in keys],
                r["value"],
                *[r["metrics"].get(m) for m in shown],
                r["step"],
                r["seconds"],
                r["run"] if r.get("run_exists", True) else "",
                r["reason"],
            ])
        return header, rows, metric, direction, len(keys)

    def write_summary(self, sweep_dir: Path) -> str:
        """Rewrite summary.csv and summary.md from every record; returns the Markdown table."""
        records = self.read_records(sweep_dir)
        if not records:
            return ""
        header, rows, metric, direction, n_keys = self.table(records)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
        write_atomic(sweep_dir / "summary.csv", out.getvalue())
        # For people: overrides that every job shares go above the table, not in a column of their own.
        common = {}
        if len(records) > 1:
            for i in range(3, 3 + n_keys):
                values = {row[i] for row in rows}
                if len(values) == 1:
                    common[i] = (header[i], values.pop())
        keep = [i for i in range(len(header)) if i not in common]
        if not any(row[-1] for row in rows):
            keep = keep[:-1]  # no reasons: no empty reason column
        shown_header = list(header)
        shown_header[3 + n_keys] = f"{metric} ({direction[:3]})"  # the sort key, and which way
        table = markdown_table([shown_header[i] for i in keep],
                               [[format_value(row[i], header[i]) for i in keep] for row in rows])
        failed = sum(r["status"] != "completed" for r in records)
        title = f"{len(records)} jobs ({failed} failed), sorted by {metric} ({direction})."
        if common:
            title += " Common overrides: " + " ".join(f"{k}={v}" for k, v in common.values()) + "."
        title += (f" TensorBoard: `tensorboard --logdir {os.path.relpath(sweep_dir)}` "
                  "(each run is named by its job number and overrides).")
        write_atomic(sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir.name}\n\n{title}\n\n{table}\n")
        return f"{title}\n{table}"

    def _report(self) -> None:
        if self._printed or self._sweep_dir is None or not (self._sweep_dir / RECORDS).is_dir():
            return
        self._printed = True
        with file_lock(self._sweep_dir / RECORDS / "lock"):
            text = self.write_summary(self._sweep_dir)
        if self.print_table and text:
            where = os.path.relpath(self._sweep_dir)
            print(f"\nSweep summary ({where}/summary.md, summary.csv): {text}\n", flush=True)

    def _at_exit(self) -> None:
        if self._printed:
            return
        try:
            self._report()
            records = self.read_records(self._sweep_dir) if self._sweep_dir else []
            failed = [r for r in records if r["status"] != "completed"]
            if failed:
                print(f"sweep: {len(failed)} of {len(records)} jobs failed (reasons in the table; the first "
                      "failure's error is above): exit status 1", flush=True)
        except Exception:
            pass


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
