"""Training throughput of the project against a minimal hand-written PyTorch TBPTT loop, and start-up times.

    python benchmarks/throughput.py [--layers 3 --state-size 4 --streams 5 --chunk-length 15 --repeats 5
                                     --chunks 640 --threads N --device cpu|gpu --skip-cli]
                                    [KEY=VALUE ...]   (extra Hydra overrides for (b), to locate a cost)

In ONE process, alternating, `--repeats` times:

(a) hand-written: `nn.LSTM` (multi-layer) + `nn.Linear` head, Adagrad lr 0.3, the (h, c) state carried and
    detached after every chunk, one optimizer step per chunk, no host syncs in the loop; the same echo data
    (`echo_lstm.data.echo_series`, new series and a zero state every epoch).
(b) project: the real `echo_lstm.training.train(cfg)`, exactly what `python train.py` calls, on the app's own
    Hydra config (composed with the compose API, as tests/conftest.py does) with overrides for layers,
    state size, streams, chunk length, max_steps, threads and a temp run dir (with more streams than the
    default, total_series_length keeps each stream as long as by default): real EchoDataModule, EchoLSTM,
    TensorBoardLogger, default callbacks (checkpoints, progress bar on, figure, ...), default logging,
    real `pl.Trainer.fit`. Two changes, both needed for the timing only: early stopping is removed
    (`callbacks.early_stopping=null`: it would end the run once the echo is learned, ~500 chunks in), and
    one probe callback is added that only reads the clocks in hooks.
Both use the same number of torch threads: --threads, else the config's `threads` (0: torch's default).

chunks/s is steady state: both paths first run one warm-up batch (`data.chunks_per_batch` chunks) that is
not timed; (b) is timed from the end of its warm-up batch to the end of its last training batch. Two
figures for (b):
  train    -- training only: the time spent in validation (from `on_validation_start` up to the next
              training batch, so including the checkpoints saved when validation ends) is subtracted, as
              (a) does no validation. This is the like-for-like ratio.
  with val -- everything a run spends, validation and its checkpoints included.
`b/a CPU` compares CPU time of the process instead of wall time: far steadier on a shared machine.
Start-up (imports, config composition, `train()` up to the first training batch) is reported separately.

Unless `--skip-cli`, it then times `python train.py` in subprocesses: start-up to the first training step
(a probe callback added by a Hydra override prints `time.time()` in `on_train_batch_start`; compared with
the time just before the subprocess was started), `--help`, `--cfg job`, a config error (`layers=0`),
and the wall time of a default `python train.py` (which stops by early stopping once the echo is learned).

`--device gpu` (default 1024 streams, state 128) needs CUDA and stops with a clear message without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.9
CLI_LIMIT_S = 1.5
MAX_AUTO_CHUNKS = 640  # --chunks auto: at most this many timed chunks per measurement ...
AUTO_SECONDS = 1.0  # ... and about this long for (a)


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput of echo-lstm's training path vs a minimal hand-written PyTorch TBPTT loop.",
    )
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--state-size", type=int, default=None, help="default 4 (cpu), 128 (gpu)")
    p.add_argument("--streams", type=int, default=None, help="data.batch_size; default 5 (cpu), 1024 (gpu)")
    p.add_argument("--chunk-length", type=int, default=15, help="data.truncated_backprop_length")
    p.add_argument("--chunks-per-batch", type=int, default=None,
                   help="data.chunks_per_batch (default: the config's)")
    p.add_argument("--repeats", type=int, default=5, help="alternations of (a) and (b)")
    p.add_argument("--chunks", type=int, default=None,
                   help=f"timed chunks per measurement, after one warm-up batch (rounded up to whole "
                        f"batches); default: about {AUTO_SECONDS:g} s of (a), at most {MAX_AUTO_CHUNKS}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for BOTH paths; default: the config's `threads` "
                        "(0 there = torch's default, what train.py uses)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="extra Hydra overrides for (b) only, e.g. callbacks.echo_figure=null (to find a "
                        "cost)")
    p.add_argument("--skip-cli", action="store_true",
                   help="skip the train.py subprocess timings (first step, --help, --cfg, config error, "
                        "default run)")
    a = p.parse_args(argv)
    gpu = a.device == "gpu"
    a.state_size = a.state_size if a.state_size is not None else (128 if gpu else 4)
    a.streams = a.streams if a.streams is not None else (1024 if gpu else 5)
    for name in ("layers", "state_size", "streams", "chunk_length", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.chunks is not None and a.chunks < 1:
        p.error("--chunks must be >= 1")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    return a


# ---------------------------------------------------------------------------------------------- config
def compose(overrides: list[str], run_dir: Path):
    """The app's config, composed with Hydra's compose API (as tests/conftest.py's `compose`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from echo_lstm.config import register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    validate(cfg)  # as train.py does before train()
    return cfg


def project_overrides(a: argparse.Namespace, defaults, threads: int) -> list[str]:
    """Overrides of the user's config that give the benchmark's model and data (nothing else)."""
    d = defaults.data
    o = [
        f"layers={a.layers}",
        f"model.state_size={a.state_size}",
        f"data.batch_size={a.streams}",
        f"data.truncated_backprop_length={a.chunk_length}",
        f"threads={threads}",  # the same number as (a) uses
    ]
    if a.chunks_per_batch is not None:
        o.append(f"data.chunks_per_batch={a.chunks_per_batch}")
    # Keep each stream as long as in the default config (10000 bits): with many streams the default total
    # would leave an epoch of one block, shorter than trainer.val_check_interval, which Lightning refuses.
    per_stream = d.total_series_length // d.batch_size
    if a.streams != d.batch_size:
        o.append(f"data.total_series_length={per_stream * a.streams}")
    if d.val_series_length // a.streams < a.chunk_length:  # validation needs one chunk per stream
        o.append(f"data.val_series_length={a.streams * a.chunk_length}")
    if a.device == "gpu":
        o.append("device.accelerator=gpu")
    return [*o, *a.overrides]


def tune_malloc() -> str:
    """The allocator setting that `train()` applies to its process (echo_lstm.training.keep_freed_memory),
    applied up front so that (a) runs under it from the first repeat too."""
    from echo_lstm.training import keep_freed_memory

    return "malloc tuned (mallopt, as train() does)" if keep_freed_memory() else "malloc NOT tuned (no glibc)"


# ---------------------------------------------------------------------------------------------- probes
_PROBE = None  # the probe the next `train()` call gets, through `current_probe` (a Hydra `_target_`)


def current_probe():
    return _PROBE


def _sync(pl_module) -> None:
    if pl_module.device.type == "cuda":
        import torch

        torch.cuda.synchronize(pl_module.device)


def _clocks() -> tuple[float, float, int]:
    """(wall, CPU of this process, minor page faults so far). CPU time is far less disturbed than wall time
    by other processes on a shared machine; page faults show the allocator handing memory back and forth
    to the OS (large tensors; train() keeps freed memory, see echo_lstm.training.keep_freed_memory)."""
    import resource

    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def make_probe(warmup_batches: int):
    """A callback that reads the clocks in hooks: steady-state window, validation time inside it."""
    from pytorch_lightning.callbacks import Callback

    class Probe(Callback):
        def __init__(self) -> None:
            self.batches = 0
            self.first_batch_at: float | None = None  # on_train_batch_start of the first batch (wall)
            self.t0: tuple[float, float] | None = None  # end of the warm-up batches
            self.step0 = 0
            self.t_end: tuple[float, float] | None = None  # end of the last training batch
            self.step_end = 0
            self.val = [0.0, 0.0]  # validation inside the window (wall, CPU), up to t_end
            self.val_at_end = (0.0, 0.0)
            self._val_started: tuple[float, float] | None = None

        def _close_validation(self) -> None:
            if self._val_started is not None:
                now = _clocks()
                self.val[0] += now[0] - self._val_started[0]
                self.val[1] += now[1] - self._val_started[1]
                self._val_started = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.first_batch_at is None:
                self.first_batch_at = time.perf_counter()
            self._close_validation()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._close_validation()

        def on_validation_start(self, trainer, pl_module) -> None:
            if self.t0 is not None and not trainer.sanity_checking:
                self._val_started = _clocks()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches += 1
            if self.batches < warmup_batches:
                return
            _sync(pl_module)
            now = _clocks()
            if self.batches == warmup_batches:
                self.t0, self.step0 = now, trainer.global_step
            else:
                self.t_end, self.step_end = now, trainer.global_step
                self.val_at_end = tuple(self.val)

    return Probe()


def first_step_probe():
    """For `python train.py +callbacks.bench_probe._target_=benchmarks.throughput.first_step_probe`:
    prints the wall clock when fit starts and when the first training step starts."""
    from pytorch_lightning.callbacks import Callback

    class FirstStep(Callback):
        done = False

        def on_fit_start(self, trainer, pl_module) -> None:
            print(f"BENCH fit_start {time.time():.6f}", flush=True)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not self.done:
                self.done = True
                print(f"BENCH first_step {time.time():.6f}", flush=True)

    return FirstStep()


# ---------------------------------------------------------------------------------------------- (a) and (b)
@dataclass
class Measure:
    chunks: int
    seconds: float  # steady-state window, wall clock
    cpu: float  # the same window, CPU time of this process (all its threads)
    val_seconds: float = 0.0  # validation inside the window (b only), wall ...
    val_cpu: float = 0.0  # ... and CPU
    startup: float = 0.0  # (b): train() call to the first training batch
    faults: int = 0  # minor page faults in the window (validation included)

    @property
    def rate(self) -> float:  # chunks/s, training only
        return self.chunks / (self.seconds - self.val_seconds)

    @property
    def rate_all(self) -> float:  # chunks/s, everything in the window
        return self.chunks / self.seconds

    @property
    def rate_cpu(self) -> float:  # chunks per CPU second, training only
        return self.chunks / (self.cpu - self.val_cpu)


@dataclass
class Setup:
    a: argparse.Namespace
    threads: int
    chunks_per_batch: int
    stream_length: int
    echo_step: int
    seed: int
    overrides: list[str]
    tmp: Path
    timed_chunks: int = 0
    compose_seconds: list[float] = field(default_factory=list)


def hand_written(s: Setup, warmup: int, timed: int) -> Measure:
    """(a) The minimal PyTorch TBPTT loop."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from echo_lstm.data import TRAIN, echo_series, to_chunks

    a = s.a
    device = torch.device("cuda" if a.device == "gpu" else "cpu")
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rnn = nn.LSTM(1, a.state_size, a.layers, batch_first=True).to(device)
    head = nn.Linear(a.state_size, 2).to(device)
    opt = torch.optim.Adagrad([*rnn.parameters(), *head.parameters()], lr=0.3)
    T = a.chunk_length

    def epoch_data(epoch: int):
        x, y = echo_series(s.seed, TRAIN, epoch, range(a.streams), s.stream_length, s.echo_step)
        x = to_chunks(x, T).to(device=device, dtype=torch.float32).unsqueeze(-1).contiguous()
        return x, to_chunks(y, T).to(device).contiguous()  # [chunks, streams, T(, 1)]

    zeros = torch.zeros(a.layers, a.streams, a.state_size, device=device)
    st = {"epoch": 0, "k": 0, "h": zeros, "c": zeros, "data": epoch_data(0)}

    def run(n: int) -> None:
        x, y = st["data"]
        h, c, k = st["h"], st["c"], st["k"]
        for _ in range(n):
            if k == len(x):  # a new epoch: new series, fresh state
                st["epoch"] += 1
                x, y = st["data"] = epoch_data(st["epoch"])
                h, c, k = zeros, zeros, 0
            out, (h, c) = rnn(x[k], (h, c))
            loss = F.cross_entropy(head(out).reshape(-1, 2), y[k].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            h, c = h.detach(), c.detach()
            k += 1
        st["h"], st["c"], st["k"] = h, c, k

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(warmup)
    sync()
    t0 = _clocks()
    run(timed)
    sync()
    t1 = _clocks()
    return Measure(timed, t1[0] - t0[0], t1[1] - t0[1], faults=t1[2] - t0[2])


def project(s: Setup, repeat: int, timed: int) -> Measure:
    """(b) The project's real training path: `echo_lstm.training.train(cfg)`, as train.py runs it."""
    global _PROBE
    from echo_lstm.training import train

    run_dir = s.tmp / f"run{repeat}"
    t = time.perf_counter()
    cfg = compose([
        *s.overrides,
        f"trainer.max_steps={s.chunks_per_batch + timed}",
        "callbacks.early_stopping=null",
        f"+callbacks.bench_probe._target_={__name__}.current_probe",
    ], run_dir)
    s.compose_seconds.append(time.perf_counter() - t)
    _PROBE = probe = make_probe(warmup_batches=1)
    # The progress bar and the run summary go to a file (as they would go to a terminal), not in our table.
    log = s.tmp / f"run{repeat}.log"
    try:
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            called = time.perf_counter()
            train(cfg)
    except BaseException:
        print(f"(b) failed; the end of its output:\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        _PROBE = None
    if probe.t0 is None or probe.t_end is None:
        raise RuntimeError(f"(b) ran {probe.batches} training batches, too few to time; its output:\n"
                           f"{log.read_text()[-3000:]}")
    (w0, c0, f0), (w1, c1, f1) = probe.t0, probe.t_end
    return Measure(probe.step_end - probe.step0, w1 - w0, c1 - c0, *probe.val_at_end,
                   startup=probe.first_batch_at - called, faults=f1 - f0)


# ---------------------------------------------------------------------------------------------- train.py
def _train_py(*args: str, timeout: float = 300) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `python train.py ARGS` from the repo root; returns (wall clock at start, seconds, result)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started_wall, t = time.time(), time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return started_wall, time.perf_counter() - t, proc


def _fail(what: str, proc: subprocess.CompletedProcess) -> str:
    return f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"


def cli_timings(tmp: Path, repeats: int) -> list[str]:
    lines = []
    # 1. Start-up to the first training step. A probe callback added with a Hydra override prints the wall
    #    clock at `on_fit_start` and at the first `on_train_batch_start`; max_steps=64 is two training
    #    batches, so the run validates once and ends normally.
    probe = "+callbacks.bench_probe._target_=benchmarks.throughput.first_step_probe"
    started, seconds, proc = _train_py("trainer.max_steps=64", f"hydra.run.dir={tmp / 'first-step'}", probe)
    marks = dict(re.findall(r"BENCH (\w+) ([\d.]+)", proc.stdout))
    if proc.returncode != 0 or "first_step" not in marks:
        lines.append(_fail("python train.py trainer.max_steps=64", proc))
    else:
        lines.append(f"python train.py: process start -> first training step  "
                     f"{float(marks['first_step']) - started:6.2f} s  "
                     f"(-> Trainer.fit start {float(marks['fit_start']) - started:.2f} s; "
                     f"whole 64-step run {seconds:.2f} s)")

    # 2. Commands that must answer fast: median of `repeats` runs (at most 3).
    run_dir = f"hydra.run.dir={tmp / 'cli'}"
    for args, expect_rc in ((["--help"], 0), (["--cfg", "job"], 0), (["layers=0", run_dir], 2)):
        times, proc = [], None
        for _ in range(min(repeats, 3)):
            _, seconds, proc = _train_py(*args)
            times.append(seconds)
        shown = "python train.py " + " ".join(a for a in args if not a.startswith("hydra."))
        if proc.returncode != expect_rc:
            lines.append(_fail(shown, proc))
            continue
        med = statistics.median(times)
        note = f"  ({proc.stderr.strip().splitlines()[-1]})" if expect_rc else ""
        verdict = "ok" if med < CLI_LIMIT_S else f"OVER {CLI_LIMIT_S} s"
        lines.append(f"{shown:<52} {med:6.2f} s  (median of {len(times)}; < {CLI_LIMIT_S} s: {verdict})"
                     f"{note}")

    # 3. A default run, exactly as a user types it (only the run dir moved into the temp dir).
    _, seconds, proc = _train_py(f"hydra.run.dir={tmp / 'default'}", timeout=600)
    if proc.returncode != 0:
        lines.append(_fail("python train.py", proc))
    else:
        m = re.search(r"echo-lstm: (.*?) \(target_acc.*? at step (\d+),.* after ([\d.]+) s", proc.stdout)
        told = f"; {m.group(1)} at step {m.group(2)}, train() reports {m.group(3)} s" if m else ""
        lines.append(f"{'python train.py  (default run, wall time)':<52} {seconds:6.2f} s{told}")
    return lines


# ---------------------------------------------------------------------------------------------- report
def _load() -> str:
    """The 1-minute load average: other processes on the machine disturb wall-clock figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def _row(name: str, values: list[float], fmt: str = "{:10.1f}") -> str:
    return f"{name:<38}" + "".join(fmt.format(v) for v in _stats(values))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t = time.perf_counter()
    import torch

    if a.device == "gpu" and not torch.cuda.is_available():
        print(f"error: --device gpu needs a CUDA GPU, and this torch ({torch.__version__}) sees none "
              "(torch.cuda.is_available() is False). Run on a machine with a GPU, or drop --device gpu.",
              file=sys.stderr)
        return 2
    import pytorch_lightning as pl

    import echo_lstm.training  # noqa: F401  (and through it, nothing heavy: train() imports the rest)
    from echo_lstm.data import EchoDataModule  # noqa: F401
    from echo_lstm.model import EchoLSTM  # noqa: F401

    import_seconds = time.perf_counter() - t
    malloc = tune_malloc()
    with tempfile.TemporaryDirectory(prefix="echo-lstm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        defaults = compose([], tmp / "defaults")
        # The same number of threads for both paths: --threads, else what train.py would use.
        threads = a.threads or defaults.threads or torch.get_num_threads()
        threads_from = ("--threads" if a.threads else f"config threads={defaults.threads}" if defaults.threads
                        else "config threads=0: torch's default")
        overrides = project_overrides(a, defaults, threads)
        cfg = compose(overrides, tmp / "check")
        s = Setup(a, threads, cfg.data.chunks_per_batch, cfg.data.total_series_length // a.streams,
                  cfg.data.echo_step, cfg.seed, overrides, tmp)
        cpb = s.chunks_per_batch

        print(f"echo-lstm throughput: layers {a.layers}, state {a.state_size}, streams {a.streams}, "
              f"chunk length {a.chunk_length}, {cpb} chunks per batch, {a.device}, {threads} torch threads "
              f"({threads_from})")
        print(f"  {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"torch {torch.__version__}, pytorch_lightning {pl.__version__}; {malloc}; "
              f"load average {_load()}")
        print(f"  project overrides: {' '.join(overrides)}; callbacks.early_stopping=null (timing only)")

        if a.chunks is None:  # about AUTO_SECONDS of (a); the calibration doubles as a first warm-up
            m = hand_written(s, warmup=min(cpb, 8), timed=cpb)
            timed = min(MAX_AUTO_CHUNKS, max(1, round(m.rate * AUTO_SECONDS)))
        else:
            timed = a.chunks
        timed = -(-timed // cpb) * cpb  # whole batches
        print(f"  {a.repeats} repeats of (a) then (b); each: 1 warm-up batch ({cpb} chunks, not timed), "
              f"then {timed} timed chunks")
        print()

        hand, proj = [], []
        print(f"{'repeat':<8}{'(a) hand chunks/s':>18}{'(b) train':>12}{'(b) with val':>14}{'b/a':>8}"
              f"{'b/a CPU':>9}{'(b) start-up s':>16}")
        for r in range(a.repeats):
            ma = hand_written(s, warmup=cpb, timed=timed)
            mb = project(s, r, timed)
            hand.append(ma)
            proj.append(mb)
            print(f"{r + 1:<8}{ma.rate:>18.1f}{mb.rate:>12.1f}{mb.rate_all:>14.1f}{mb.rate / ma.rate:>8.3f}"
                  f"{mb.rate_cpu / ma.rate_cpu:>9.3f}{mb.startup:>16.2f}", flush=True)

        ratios = [b.rate / h.rate for h, b in zip(hand, proj, strict=True)]
        ratios_all = [b.rate_all / h.rate for h, b in zip(hand, proj, strict=True)]
        ratios_cpu = [b.rate_cpu / h.rate_cpu for h, b in zip(hand, proj, strict=True)]
        tokens = a.streams * a.chunk_length
        print()
        print(f"{'':<38}{'min':>10}{'median':>10}{'max':>10}")
        print(_row("(a) hand-written   chunks/s", [m.rate for m in hand]))
        print(_row("(b) project train  chunks/s", [m.rate for m in proj]))
        print(_row("(b) project w/ val chunks/s", [m.rate_all for m in proj]))
        print(_row("(a) hand-written   tokens/s", [m.rate * tokens for m in hand], "{:10.0f}"))
        print(_row("(b) project train  tokens/s", [m.rate * tokens for m in proj], "{:10.0f}"))
        print(_row("ratio b/a (train)", ratios, "{:10.3f}"))
        print(_row("ratio b/a (with val)", ratios_all, "{:10.3f}"))
        print(_row("ratio b/a (train, by CPU time)", ratios_cpu, "{:10.3f}"))
        val_share = [m.val_seconds / m.seconds for m in proj]
        print(_row("(b) validation share of the window", val_share, "{:10.3f}"))
        print(_row("(a) minor page faults per chunk", [m.faults / m.chunks for m in hand]))
        print(_row("(b) minor page faults per chunk", [m.faults / m.chunks for m in proj]))
        med = statistics.median(ratios)
        print(f"target: median b/a (train) >= {TARGET_RATIO}: {'met' if med >= TARGET_RATIO else 'MISSED'} "
              f"({med:.3f})")
        print()
        print("start-up, excluded from chunks/s:")
        print(f"  imports (torch, pytorch_lightning, echo_lstm)        {import_seconds:6.2f} s")
        print(f"  compose the config (Hydra compose API), median        "
              f"{statistics.median(s.compose_seconds):6.2f} s")
        print(f"  (b) train(cfg) call -> first training batch, median  "
              f"{statistics.median(m.startup for m in proj):6.2f} s")
        print(f"  load average now {_load()}")
        if not a.skip_cli:
            print()
            print("train.py, in subprocesses:")
            for line in cli_timings(tmp / "cli", a.repeats):
                print("  " + line, flush=True)
    print(f"\nbenchmark wall time {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
