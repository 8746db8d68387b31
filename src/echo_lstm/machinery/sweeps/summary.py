"""The end of a multirun (docs/research.md, "Sweeps"): one table of every job (`summary.md`, `summary.csv`), a
picture (`summary.png`), and the sweep's outcome (one `error:` line and a non-zero exit when a job failed).

A Hydra callback, light on purpose (no torch): Hydra instantiates it in every run. `on_job_end` runs in the process
that ran the job (the main process, a joblib worker, a cluster node): it writes the job's record to
`<sweep dir>/.jobs/<num>.json` and rewrites the table from every record there, so the table is complete after every
job, whatever happens to the sweep afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import fcntl
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from echo_lstm import metrics as registry
from echo_lstm.machinery.errors import command, hydra_quote, relpath, signal_name
from echo_lstm.machinery.rundir import write_file
from echo_lstm.machinery.sweeps.naming import job_values, split_override

RECORDS = ".jobs"


class JobResult(float):
    """What a job returns: a float for Hydra's sweepers (the optimized metric; NaN for a failed job) with the run's
    final metrics and step, and the reason and exit code of a job that failed in a known way (a bad setting ...)."""

    def __new__(cls, value: float, metrics: dict[str, float] | None = None, status: str = "completed",
                reason: str = "", exit_code: int = 0, step: int | None = None) -> JobResult:
        result = super().__new__(cls, value)
        vars(result).update(metrics=dict(metrics or {}), status=status, reason=reason, exit_code=exit_code, step=step)
        return result

    @classmethod
    def failed(cls, reason: str, exit_code: int) -> JobResult:
        return cls(failed_value(), status="failed", reason=reason, exit_code=exit_code)


def sweeper_direction(sweeper: Any) -> str | None:
    """'maximize' or 'minimize' if the sweeper optimizes in a direction (Optuna's: a name or an enum), else None."""
    text = str(sweeper.get("direction") if sweeper else None).lower()
    return "maximize" if "max" in text else "minimize" if "min" in text else None


def failed_value() -> float:
    """What a failed job returns to the sweeper: NaN, but for Optuna the worst value of its direction, which it
    takes (a NaN makes hydra-optuna-sweeper tell the trial twice and abort the whole search)."""
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    if sweeper is None or "Optuna" not in str(sweeper.get("_target_", "")):
        return math.nan
    return -math.inf if sweeper_direction(sweeper) == "maximize" else math.inf


@dataclass
class JobRecord:
    job: int
    status: str  # completed | failed | stopped | not started
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


def format_value(value: Any, column: str) -> str:
    """For people: steps as integers, seconds to 0.1 s, other numbers to 4 decimals (3 digits if tiny)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else str(value)
    if not math.isfinite(value):
        return "never" if column == registry.STEPS_TO_ECHO and value == math.inf else str(float(value))
    if "step" in column or column in ("rank", "job"):
        return str(round(value))
    if column == "seconds":
        return f"{value:.1f}"
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"


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
        missing = r.value is None or not math.isfinite(r.value)
        score = 0.0 if missing else (r.value if r.direction == "minimize" else -r.value)
        steps = r.metrics.get(registry.STEPS_TO_ECHO)
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
        keys = list(dict.fromkeys(k for r in records for k in r.values()))
        values = {k: {r.values().get(k, "") for r in records} for k in keys}
        varying = [k for k in keys if len(values[k]) > 1 or len(records) == 1]
        common = {k: next(iter(values[k])) for k in keys if k not in varying}
        return cls(ranked(records), metric, records[0].direction, varying, common)

    def table(self, keys: list[str]) -> tuple[list[str], list[list[Any]]]:
        """The header and the rows (rank: among completed jobs, which come first), with a column for each key."""
        shown = [m for m in registry.SUMMARY if m != self.metric]
        header = ["rank", "job", "status", *keys, self.metric, *shown, "step", "seconds", "run", "reason"]
        rows = [[i + 1 if r.status == "completed" else "", r.job, r.status, *[r.values().get(k, "") for k in keys],
                 r.value, *[r.metrics.get(m) for m in shown], r.step, r.seconds, r.run, r.reason]
                for i, r in enumerate(self.records)]
        return header, rows

    def csv(self) -> str:
        header, rows = self.table([*self.common, *self.varying])
        out = io.StringIO()
        csv.writer(out).writerows([header, *rows])  # None as "", floats in full (repr)
        return out.getvalue()

    def markdown(self, sweep_dir: Path, picture: bool) -> str:
        header, rows = self.table(self.varying)
        keep = [i for i, name in enumerate(header) if name != "reason" or any(row[i] for row in rows)]
        shown_header = [f"{h} ({self.direction[:3]})" if h == self.metric else h for h in header]
        table = markdown_table([shown_header[i] for i in keep],
                               [[format_value(row[i], header[i]) for i in keep] for row in rows])
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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._done = False
        atexit.register(self._at_exit)  # a job that raised ends the sweep by re-raising its exception

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from echo_lstm.machinery.sweeps import stop

        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        records = self._report()
        signum = stop.requested(self._sweep_dir)
        if signum is not None:
            self.end_stopped(self._sweep_dir, signum)
        failed = [r for r in records if r.status != "completed"]
        if failed:  # one line and an exit code, as for a single run (the reasons are in the table above)
            first = failed[0]
            label = " ".join(job_values(first.overrides)) or "defaults"
            print(f"error: {len(failed)} of {len(records)} jobs failed (summary.md has every reason); "
                  f"job {first.job} ({label}): {first.reason}", file=sys.stderr, flush=True)
            raise SystemExit(first.exit_code or 1)

    @staticmethod
    def end_stopped(sweep_dir: Path, signum: int) -> None:
        """A sweep stopped by Ctrl-C / SIGTERM (sweeps/stop.py): the summary, and what was kept and how to go on,
        truthfully (the job dirs that hold a checkpoint); exits with the stop's code."""
        sweep_dir = Path(sweep_dir).resolve()
        if not sweep_dir.is_dir():  # no job had trained: the sweep left nothing
            print(f"stopped by {signal_name(signum)}; nothing was kept", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        with contextlib.suppress(Exception):
            write_summary(sweep_dir)
        records = read_records(sweep_dir)
        done = [r for r in records if r.status == "completed"]
        kept = sorted(p.parent.parent for p in sweep_dir.glob("*/checkpoints/last.ckpt"))
        stopped = [p for p in kept if not any(r.run == p.name for r in done)]
        go_on = "; continue with: " + "; ".join(
            command("python", "train.py", f"resume={hydra_quote(relpath(p))}") for p in stopped) if stopped else ""
        waiting = sum(r.status == "not started" for r in records)
        print(f"stopped by {signal_name(signum)}: {len(done)} of {len(records)} jobs finished, "
              f"{len(stopped)} stopped with a checkpoint kept, {waiting} not started (summary.md lists them){go_on}",
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
        (sweep_dir / RECORDS).mkdir(parents=True, exist_ok=True)
        write_file(sweep_dir / RECORDS / f"{record.job:06d}.json", json.dumps(asdict(record), indent=1))
        write_summary(sweep_dir)

    def job_record(self, config: DictConfig, job_return: Any) -> JobRecord:
        from hydra.core.utils import JobStatus

        num = int(config.hydra.job.num)
        run_dir = Path(str(config.hydra.runtime.output_dir))
        metric = str(config.get("optimized_metric", ""))
        outcome: dict[str, Any] = {"status": "failed", "exit_code": 1}
        if job_return.status == JobStatus.COMPLETED:
            result = job_return.return_value
            outcome = {"status": "completed", "value": float(result) if isinstance(result, (int, float)) else None}
            if isinstance(result, JobResult):
                outcome.update(vars(result))
        else:  # the job raised: a bug, with its traceback on the console
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # reading it also prints a line we do not want
                    _ = job_return.return_value
            except BaseException as error:
                outcome["reason"] = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
        direction = sweeper_direction(OmegaConf.select(config, "hydra.sweeper"))
        if direction is None:
            direction = "minimize" if registry.find(metric) and registry.better(metric) == "min" else "maximize"
        return JobRecord(job=num, overrides=list(job_return.overrides or []),
                         run=relpath(run_dir, Path(str(config.hydra.sweep.dir))) if run_dir.is_dir() else "",
                         optimized_metric=metric, direction=direction,
                         seconds=round(time.time() - self._started.pop(num, time.time()), 2), **outcome)

    def _report(self) -> list[JobRecord]:
        """Write and print the summary (once); returns the records, best first."""
        if self._done or self._sweep_dir is None or not (self._sweep_dir / RECORDS).is_dir():
            return []
        self._done = True
        text = write_summary(self._sweep_dir, picture=True)
        if self.print_table and text:
            print(f"\nSweep summary ({relpath(self._sweep_dir)}/summary.md, .csv, .png): {text}", flush=True)
        return ranked(read_records(self._sweep_dir))

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._report()


def is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode", default="")).endswith("MULTIRUN")


def read_records(sweep_dir: Path) -> list[JobRecord]:
    records = []
    for path in sorted((sweep_dir / RECORDS).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):  # being written: the next rewrite has it
            records.append(JobRecord(**json.loads(path.read_text())))
    return records


def write_summary(sweep_dir: Path, picture: bool = False) -> str:
    """Rewrite summary.csv and summary.md from every record, and with `picture` summary.png (matplotlib: ~1 s,
    so once, when the sweep ends, not after every job); returns the Markdown. Under a lock: jobs in other processes
    rewrite them in turn."""
    with open(sweep_dir / RECORDS / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file is closed)
        records = read_records(sweep_dir)
        if not records:
            return ""
        summary = Summary.of(records)
        write_file(sweep_dir / "summary.csv", summary.csv())
        if picture:
            picture = plot(summary, sweep_dir)
        text = summary.markdown(sweep_dir, picture or (sweep_dir / "summary.png").is_file())
        write_file(sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir.name}\n\n{text}")
        return text


def plot(summary: Summary, sweep_dir: Path) -> bool:
    from echo_lstm.machinery.viz.summary_plot import plot_sweep_summary

    jobs = [{"job": r.job, "status": r.status, "values": r.values(), "metrics": {**r.metrics, summary.metric: r.value}}
            for r in summary.records]
    try:
        return plot_sweep_summary(jobs, summary.varying, summary.metric, sweep_dir / "summary.png",
                                  direction=summary.direction, title=sweep_dir.name) is not None
    except Exception as error:  # a picture must never fail a sweep
        print(f"warning: summary.png could not be drawn: {error}", file=sys.stderr)
        return False
