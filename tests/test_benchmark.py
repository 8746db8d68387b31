"""Smoke tests of benchmarks/throughput.py: it runs and reports (read from its --json report, never from its
console text); no speed is asserted (machines differ)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "throughput.py"


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def report(proc: subprocess.CompletedProcess, path: Path) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(path.read_text())


def test_gpu_option_fails_clearly_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the option would run")
    proc = run_benchmark("--device", "gpu", "--json", str(tmp_path / "report.json"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --device gpu needs a CUDA GPU") and len(proc.stderr.splitlines()) == 1
    assert "chunks/s" not in proc.stdout and not (tmp_path / "report.json").exists()


def test_bad_argument_is_refused_before_any_work():
    proc = run_benchmark("--repeats", "0", timeout=60)
    assert proc.returncode == 2
    assert "--repeats must be >= 1" in proc.stderr


@pytest.mark.learning
@pytest.mark.slow
def test_benchmark_reports_both_throughputs_the_ratio_and_train_py_timings(tmp_path):
    out = tmp_path / "report.json"
    r = report(run_benchmark("--repeats", "1", "--chunks", "32", "--layers", "2", "--streams", "4",
                             "--json", str(out), timeout=600), out)
    summary = r["summary"]
    for key in ("a_chunks_per_s", "b_train_chunks_per_s", "b_with_val_chunks_per_s", "ratio_train"):
        assert all(summary[key][s] > 0 for s in ("min", "median", "max")), (key, summary[key])
    assert r["target"]["ratio_train_median"] == summary["ratio_train"]["median"]
    assert r["target"]["at_least"] == 0.9 and isinstance(r["target"]["met"], bool)
    assert r["startup"]["train_to_first_batch_s_median"] > 0
    assert r["settings"]["layers"] == 2 and r["settings"]["streams"] == 4
    assert r["settings"]["timed_chunks"] == 64  # --chunks 32, rounded up to a whole batch of 64 chunks
    assert len(r["repeats"]) == 1 and r["repeats"][0]["b"]["chunks"] == 64
    assert r["machine"]["cores"] >= 1
    cli = r["cli"]
    assert cli["first_step"]["exit"] == 0, cli["first_step"]
    assert 0 < cli["to_fit_start_s"] <= cli["to_first_step_s"]
    commands = {c["command"]: c for c in cli["quick"]}
    assert set(commands) == {"python train.py --help", "python train.py --cfg job", "python train.py layers=0"}
    for c in commands.values():
        assert c["exit"] == c["expected_exit"] and c["median_s"] > 0, c
    assert commands["python train.py layers=0"]["expected_exit"] == 2
    assert commands["python train.py layers=0"]["error"].startswith("error:")
    default = cli["default_result"]  # from the run's result.json
    assert cli["default_run"]["exit"] == 0 and default["step"] > 0 and default["seconds"] > 0
    assert default["reached"] is not None and default["stop_reason"].startswith("early stopping")


@pytest.mark.slow
def test_learning_spread_runs_each_machine_in_its_own_process_and_tabulates(tmp_path):
    # Two emulated machines, one seed of a short run: the table's rows come from processes that really ran those
    # kernels (the child reports what torch picked), with the step each seed learned at ('-' if not).
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learning_spread.py"), "--seeds", "1",
                           "--machines", "portable", "avx2", "--json", str(out), "--", "trainer.max_steps=256"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["machine"], r["kernel"], r["seed"]) for r in rows] == [("portable", "DEFAULT/SSE41", 1),
                                                                       ("avx2", "AVX2/AVX2", 1)]
    for row in rows:
        assert row["step"] <= 256 + 63 and (row["reached"] is None or 0 < row["reached"] <= row["step"])
    assert "| portable (DEFAULT/SSE41) | " in proc.stdout and "| avx2 (AVX2/AVX2) | " in proc.stdout
