"""Smoke tests of benchmarks/throughput.py: it runs and reports; no speed is asserted (machines differ)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "throughput.py"


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def number_row(label: str, out: str) -> list[float]:
    """The min, median, max of a summary row."""
    m = re.search(rf"^{re.escape(label)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, flags=re.M)
    assert m, f"no row {label!r} in:\n{out}"
    return [float(v) for v in m.groups()]


def test_benchmark_reports_both_throughputs_and_the_ratio():
    proc = run_benchmark("--repeats", "1", "--chunks", "32", "--skip-cli", "--layers", "2", "--streams", "4")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    hand = number_row("(a) hand-written   chunks/s", out)
    project = number_row("(b) project train  chunks/s", out)
    ratio = number_row("ratio b/a (train)", out)
    assert all(v > 0 for v in hand + project + ratio)
    assert "target: median b/a (train) >= 0.9:" in out
    assert "(b) train(cfg) call -> first training batch" in out
    assert "layers 2" in out and "streams 4" in out


def test_gpu_option_fails_clearly_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the option would run")
    proc = run_benchmark("--device", "gpu", timeout=120)
    assert proc.returncode == 2
    assert "error: --device gpu needs a CUDA GPU" in proc.stderr
    assert "chunks/s" not in proc.stdout


def test_bad_argument_is_refused_before_any_work():
    proc = run_benchmark("--repeats", "0", timeout=60)
    assert proc.returncode == 2
    assert "--repeats must be >= 1" in proc.stderr


@pytest.mark.slow
def test_benchmark_times_train_py_start_up_and_a_default_run():
    proc = run_benchmark("--repeats", "1", "--chunks", "32", timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "failed" not in out, out
    assert re.search(r"process start -> first training step\s+[\d.]+ s", out), out
    for command in ("python train.py --help", "python train.py --cfg job", "python train.py layers=0"):
        assert re.search(rf"{re.escape(command)}\s+[\d.]+ s", out), out
    assert re.search(r"default run, wall time\)\s+[\d.]+ s; learned the echo", out), out
