"""How much faster a sweep runs with Hydra's joblib launcher than one job after another, on this machine.

    python benchmarks/sweep_speedup.py [--jobs 4] [--steps 10000] [--n-jobs 2] [--json PATH]

Runs the same multirun twice, in temp dirs: `python train.py -m seed=1,..,J trainer.max_steps=S` (early stopping
off, so every job trains exactly S chunks) with the basic launcher, then with `hydra/launcher=joblib
hydra.launcher.n_jobs=N`. Reports both wall times, the speed-up, and each job's own training time (its
result.json), from which the bound follows: every joblib worker first imports torch and Lightning (a few seconds),
so for jobs of t seconds on N cores the speed-up is at most about N * (J t + i) / (J t + N i) (i: the import time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(tmp: Path, jobs: int, steps: int, launcher: list[str]) -> tuple[float, list[float]]:
    """Wall seconds of the whole sweep, and each job's training seconds."""
    sweep_dir = tmp / ("joblib" if launcher else "basic")
    args = [sys.executable, str(REPO / "train.py"), "-m", f"seed={','.join(str(s) for s in range(1, jobs + 1))}",
            f"trainer.max_steps={steps}", "callbacks.early_stopping=null", "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep_dir}", *launcher]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: the sweep failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    seconds = [json.loads(p.read_text())["seconds"] for p in sorted(sweep_dir.glob("*/result.json"))]
    return wall, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--steps", type=int, default=10000, help="chunks per job (about 10 s each on one core here)")
    p.add_argument("--n-jobs", type=int, default=2, help="joblib's parallel jobs")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="echo-lstm-sweep-") as name:
        tmp = Path(name)
        serial, serial_jobs = sweep(tmp, a.jobs, a.steps, [])
        parallel, parallel_jobs = sweep(tmp, a.jobs, a.steps, ["hydra/launcher=joblib",
                                                               f"hydra.launcher.n_jobs={a.n_jobs}"])
    result = {"jobs": a.jobs, "steps": a.steps, "n_jobs": a.n_jobs, "serial_s": serial, "joblib_s": parallel,
              "speed_up": serial / parallel, "job_train_s_serial": serial_jobs, "job_train_s_joblib": parallel_jobs}
    print(f"{a.jobs} jobs of {a.steps} chunks: one after another {serial:.1f} s, joblib with {a.n_jobs} workers "
          f"{parallel:.1f} s: {serial / parallel:.2f}x")
    print(f"  each job's training, s: serial {', '.join(f'{s:.1f}' for s in serial_jobs)}; "
          f"joblib {', '.join(f'{s:.1f}' for s in parallel_jobs)}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
