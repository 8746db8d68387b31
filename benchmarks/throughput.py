"""Training throughput of the project against a minimal hand-written PyTorch TBPTT loop, and start-up times.

    python benchmarks/throughput.py [--layers 3 --state-size 4 --streams 5 --chunk-length 15 --repeats 5
                                     --chunks 640 --threads N --device cpu|gpu --skip-cli --json PATH]
                                    [KEY=VALUE ...]   (extra Hydra overrides for (b), to locate a cost)

In ONE process, alternating, `--repeats` times: (a) the hand-written loop (benchmarks/baseline.py) and (b) the
project's real `echo_lstm.training.train(cfg)` on the app's own config, changed only in the model and data shape,
threads, run dir, no early stopping (it would end the run once the echo is learned) and a clock-reading callback
(benchmarks/probe.py). Both run one untimed warm-up batch first, with the same torch threads. (b) "train" leaves
out the validation inside its window (like for like), "with val" does not; "b/a CPU" compares CPU time, far
steadier on a shared machine. Unless --skip-cli, `python train.py` subprocesses: start-up to the first training
step, `--help`, `--cfg job`, a config error and a default run (read from its result.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.baseline import Workload
    from benchmarks.probe import Cli, Measure

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.9
CLI_LIMIT_S = 1.5
MAX_AUTO_CHUNKS = 640  # --chunks auto: at most this many timed chunks per measurement ...
AUTO_SECONDS = 1.0  # ... and about this long for (a)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Throughput of echo-lstm's training path vs a hand-written TBPTT loop.")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--state-size", type=int, default=None, help="default 4 (cpu), 128 (gpu)")
    p.add_argument("--streams", type=int, default=None, help="data.batch_size; default 5 (cpu), 1024 (gpu)")
    p.add_argument("--chunk-length", type=int, default=15, help="data.truncated_backprop_length")
    p.add_argument("--chunks-per-batch", type=int, default=None, help="data.chunks_per_batch (default: the config's)")
    p.add_argument("--repeats", type=int, default=5, help="alternations of (a) and (b)")
    p.add_argument("--chunks", type=int, default=None, help="timed chunks per measurement (whole batches); default: "
                   f"about {AUTO_SECONDS:g} s of (a), at most {MAX_AUTO_CHUNKS}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for BOTH paths; default: the config's `threads` (0: torch's)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--skip-cli", action="store_true", help="skip the train.py subprocess timings")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="extra Hydra overrides for (b) only, e.g. callbacks.echo_figure=null (to find a cost)")
    a = p.parse_args(argv)
    gpu = a.device == "gpu"
    a.state_size = a.state_size if a.state_size is not None else (128 if gpu else 4)
    a.streams = a.streams if a.streams is not None else (1024 if gpu else 5)
    for name in ("layers", "state_size", "streams", "chunk_length", "repeats", "chunks", "threads"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


# ---------------------------------------------------------------------------------------------- (a) and (b)
def compose(overrides: list[str], run_dir: Path) -> Any:
    """The app's config (Hydra's compose API, as tests/conftest.py), validated as train.py does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from echo_lstm.machinery.config import register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    validate(cfg)
    return cfg


def project_overrides(a: argparse.Namespace, data: Any, threads: int) -> list[str]:
    """Overrides of the default config (`data`: its data group) for the benchmark's model and data only."""
    o = [f"layers={a.layers}", f"model.net.state_size={a.state_size}", f"data.batch_size={a.streams}",
         f"data.truncated_backprop_length={a.chunk_length}", f"threads={threads}"]
    if a.chunks_per_batch is not None:
        o.append(f"data.chunks_per_batch={a.chunks_per_batch}")
    # Each stream as long as by default: with many streams the default total would make an epoch shorter than
    # trainer.val_check_interval, which Lightning refuses.
    if a.streams != data.batch_size:
        o.append(f"data.total_series_length={data.total_series_length // data.batch_size * a.streams}")
    if data.val_series_length // a.streams < a.chunk_length:  # validation needs one chunk per stream
        o.append(f"data.val_series_length={a.streams * a.chunk_length}")
    return [*o, *(["device.accelerator=gpu"] if a.device == "gpu" else []), *a.overrides]


@dataclass
class Bench:
    work: Workload
    overrides: list[str]
    threads_from: str
    tmp: Path
    timed: int = 0  # chunks per measurement, whole batches
    compose_s: list[float] = field(default_factory=list)


def prepare(a: argparse.Namespace, tmp: Path) -> Bench:
    import torch

    from benchmarks.baseline import Workload, hand_written

    defaults = compose([], tmp / "defaults")
    threads = a.threads or defaults.threads or torch.get_num_threads()  # what train.py would use
    threads_from = "--threads" if a.threads else f"config threads={defaults.threads or '0: torch default'}"
    overrides = project_overrides(a, defaults.data, threads)
    d = compose(overrides, tmp / "check").data
    w = Workload(a.layers, a.state_size, a.streams, a.chunk_length, d.chunks_per_batch, d.total_series_length //
                 a.streams, d.echo_step, int(d.seed), threads, "cuda" if a.device == "gpu" else "cpu")
    timed = a.chunks
    if timed is None:  # about AUTO_SECONDS of (a); the calibration doubles as a first warm-up
        timed = min(MAX_AUTO_CHUNKS, max(1, round(hand_written(w, 8, w.chunks_per_batch).rate * AUTO_SECONDS)))
    cpb = w.chunks_per_batch
    return Bench(w, overrides, threads_from, tmp, timed=-(-timed // cpb) * cpb)  # whole batches


def project(b: Bench, repeat: int) -> Measure:
    """(b) `echo_lstm.training.train(cfg)`, as train.py runs it, timed by a Probe callback."""
    from benchmarks.probe import Probe
    from echo_lstm.training import train

    t = time.perf_counter()
    cfg = compose([*b.overrides, f"trainer.max_steps={b.work.chunks_per_batch + b.timed}",
                   "callbacks.early_stopping=null"], b.tmp / f"run{repeat}")
    b.compose_s.append(time.perf_counter() - t)
    probe, log = Probe(warmup_batches=1), b.tmp / f"run{repeat}.log"
    try:  # the progress bar and the run summary go to a file (as to a terminal), not into our table
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            called = time.perf_counter()
            train(cfg, callbacks=[probe])
        if (m := probe.measure(called)) is None:
            raise RuntimeError(f"(b) ran {probe.batches} training batches, too few to time")
    except BaseException:
        print(f"(b) failed; the end of its output:\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    return m


def alternate(b: Bench, repeats: int) -> list[tuple[Measure, Measure]]:
    """(a) then (b), `repeats` times; a table row each as they come."""
    from benchmarks.baseline import hand_written

    print(f"{'repeat':<8}{'(a) hand chunks/s':>18}{'(b) train':>12}{'(b) with val':>14}{'b/a':>8}{'b/a CPU':>9}"
          f"{'(b) start-up s':>16}")
    pairs = []
    for r in range(repeats):
        pairs.append((ma := hand_written(b.work, b.work.chunks_per_batch, b.timed), mb := project(b, r)))
        print(f"{r + 1:<8}{ma.rate:>18.1f}{mb.rate:>12.1f}{mb.rate_all:>14.1f}{mb.rate / ma.rate:>8.3f}"
              f"{mb.rate_cpu / ma.rate_cpu:>9.3f}{mb.startup:>16.2f}", flush=True)
    return pairs


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Stats:
    min: float
    median: float
    max: float


ROWS = {  # summary key: table label, format, the value of one repeat from (a, b, tokens per chunk)
    "a_chunks_per_s": ("(a) hand-written   chunks/s", ".1f", lambda a, b, n: a.rate),
    "b_train_chunks_per_s": ("(b) project train  chunks/s", ".1f", lambda a, b, n: b.rate),
    "b_with_val_chunks_per_s": ("(b) project w/ val chunks/s", ".1f", lambda a, b, n: b.rate_all),
    "a_tokens_per_s": ("(a) hand-written   tokens/s", ".0f", lambda a, b, n: a.rate * n),
    "b_train_tokens_per_s": ("(b) project train  tokens/s", ".0f", lambda a, b, n: b.rate * n),
    "ratio_train": ("ratio b/a (train)", ".3f", lambda a, b, n: b.rate / a.rate),
    "ratio_with_val": ("ratio b/a (with val)", ".3f", lambda a, b, n: b.rate_all / a.rate),
    "ratio_train_cpu": ("ratio b/a (train, by CPU time)", ".3f", lambda a, b, n: b.rate_cpu / a.rate_cpu),
    "b_validation_share": ("(b) validation share of the window", ".3f", lambda a, b, n: b.val_seconds / b.seconds),
    "a_faults_per_chunk": ("(a) minor page faults per chunk", ".1f", lambda a, b, n: a.faults / a.chunks),
    "b_faults_per_chunk": ("(b) minor page faults per chunk", ".1f", lambda a, b, n: b.faults / b.chunks),
}


@dataclass
class Report:
    settings: dict[str, Any]  # the Workload, threads_from, repeats, timed_chunks, overrides of (b)
    machine: dict[str, Any]  # arch, cores, versions, malloc_tuned, 1-minute load average at start and end
    repeats: list[dict[str, Any]]  # each: {"a": Measure and rates, "b": Measure and rates}
    summary: dict[str, Stats]  # ROWS' keys: min, median, max over the repeats
    target: dict[str, Any]  # median b/a (train), its target, whether met; the limit for the quick commands
    startup: dict[str, float]  # seconds, excluded from chunks/s
    cli: Cli | None = None
    wall_s: float = 0.0


def make_report(a: argparse.Namespace, b: Bench, pairs: list[tuple[Measure, Measure]], machine: dict[str, Any],
                imports_s: float) -> Report:
    settings = {**asdict(b.work), "threads_from": b.threads_from, "repeats": a.repeats, "timed_chunks": b.timed,
                "overrides": b.overrides}
    repeats = [{"a": {**asdict(ma), "rate": ma.rate, "rate_cpu": ma.rate_cpu},
                "b": {**asdict(mb), "rate": mb.rate, "rate_all": mb.rate_all, "rate_cpu": mb.rate_cpu}}
               for ma, mb in pairs]
    summary = {}
    for key, (_, _, value) in ROWS.items():
        values = [value(ma, mb, b.work.streams * b.work.chunk_length) for ma, mb in pairs]
        summary[key] = Stats(min(values), statistics.median(values), max(values))
    med = summary["ratio_train"].median
    startup = {"imports_s": imports_s, "compose_s_median": statistics.median(b.compose_s),
               "train_to_first_batch_s_median": statistics.median(mb.startup for _, mb in pairs)}
    return Report(settings, {**machine, "load_end": load()}, repeats, summary,
                  {"ratio_train_median": med, "at_least": TARGET_RATIO, "met": med >= TARGET_RATIO,
                   "cli_limit_s": CLI_LIMIT_S}, startup)


def print_header(a: argparse.Namespace, b: Bench, m: dict[str, Any]) -> None:
    w = b.work
    print(f"echo-lstm throughput: layers {w.layers}, state {w.state_size}, streams {w.streams}, chunk length "
          f"{w.chunk_length}, {w.chunks_per_batch} chunks per batch, {a.device}, {w.threads} torch threads "
          f"({b.threads_from})")
    print(f"  {m['arch']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, pytorch_lightning "
          f"{m['pytorch_lightning']}; malloc {'' if m['malloc_tuned'] else 'NOT '}tuned (as train() does); "
          f"load average {m['load_start']}")
    print(f"  project overrides: {' '.join(b.overrides)}; callbacks.early_stopping=null (timing only)")
    print(f"  {a.repeats} repeats of (a) then (b); each: 1 warm-up batch ({w.chunks_per_batch} chunks, not timed), "
          f"then {b.timed} timed chunks\n")


def print_summary(r: Report) -> None:
    print(f"\n{'':<38}{'min':>10}{'median':>10}{'max':>10}")
    for key, (label, fmt, _) in ROWS.items():
        print(f"{label:<38}" + "".join(f"{v:10{fmt}}" for v in asdict(r.summary[key]).values()))
    t, s = r.target, r.startup
    print(f"target: median b/a (train) >= {t['at_least']}: {'met' if t['met'] else 'MISSED'} "
          f"({t['ratio_train_median']:.3f})")
    print("\nstart-up, excluded from chunks/s:")
    print(f"  imports (torch, pytorch_lightning, echo_lstm)        {s['imports_s']:6.2f} s")
    print(f"  compose the config (Hydra compose API), median        {s['compose_s_median']:6.2f} s")
    print(f"  (b) train(cfg) call -> first training batch, median  {s['train_to_first_batch_s_median']:6.2f} s")
    print(f"  load average now {r.machine['load_end']}")


def print_cli(cli: Cli) -> None:
    print("\ntrain.py, in subprocesses:")
    f = cli.first_step
    if cli.to_first_step_s is None:
        print(f"  {f.command} failed (exit {f.exit}): {f.error}")
    else:
        print(f"  python train.py: process start -> first training step  {cli.to_first_step_s:6.2f} s  (-> "
              f"Trainer.fit start {cli.to_fit_start_s:.2f} s; whole 64-step run {f.median_s:.2f} s)")
    for c in cli.quick:
        if c.exit != c.expected_exit:
            print(f"  {c.command} failed (exit {c.exit}): {c.error}")
            continue
        verdict = "ok" if c.median_s < CLI_LIMIT_S else f"OVER {CLI_LIMIT_S} s"
        note = f"  ({c.error})" if c.error else ""  # the one `error:` line of an expected refusal
        print(f"  {c.command:<52} {c.median_s:6.2f} s  (median of {len(c.seconds)}; < {CLI_LIMIT_S} s: {verdict})"
              f"{note}")
    d, r = cli.default_run, cli.default_result
    if d.exit or r["step"] is None:
        print(f"  {d.command} failed (exit {d.exit}): {d.error or 'no result.json'}")
        return
    learned = f"learned the echo at step {r['reached']}" if r["reached"] is not None else "did not learn the echo"
    print(f"  {'python train.py  (default run, wall time)':<52} {d.median_s:6.2f} s; {learned}, stopped at step "
          f"{r['step']} ({r['stop_reason']}); train() reports {r['seconds']:.2f} s")


# ---------------------------------------------------------------------------------------------- main
def load() -> float | None:
    """The 1-minute load average: other processes on the machine disturb wall-clock figures."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def load_libraries(a: argparse.Namespace) -> tuple[dict[str, Any], float] | None:
    """Import what both paths need (timed: start-up, not throughput) and describe the machine; None: no GPU for
    --device gpu (refused with one line)."""
    t, load_start = time.perf_counter(), load()
    import torch

    if a.device == "gpu" and not torch.cuda.is_available():
        print(f"error: --device gpu needs a CUDA GPU, and this torch ({torch.__version__}) sees none "
              "(torch.cuda.is_available() is False). Run on a machine with a GPU, or drop --device gpu.",
              file=sys.stderr)
        return None
    sys.path.insert(0, str(REPO))  # `benchmarks.*` when run as a script
    import pytorch_lightning as pl

    import benchmarks.baseline  # noqa: F401  (torch, the echo data)
    import echo_lstm.models.module  # noqa: F401
    import echo_lstm.training  # train() imports the rest itself

    imports_s = time.perf_counter() - t
    return {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__, "load_start": load_start,
            "malloc_tuned": echo_lstm.machinery.run.keep_freed_memory()}, imports_s  # as train(): (a) runs under it too


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t = time.perf_counter()
    if (loaded := load_libraries(a)) is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="echo-lstm-bench-") as tmp:
        b = prepare(a, Path(tmp))
        print_header(a, b, loaded[0])
        report = make_report(a, b, alternate(b, a.repeats), *loaded)
        print_summary(report)
        if not a.skip_cli:
            from benchmarks.probe import cli_timings

            report.cli = cli_timings(b.tmp, a.repeats)
            print_cli(report.cli)
    report.wall_s = time.perf_counter() - t
    print(f"\nbenchmark wall time {report.wall_s:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(asdict(report), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
