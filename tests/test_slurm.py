"""On a real SLURM cluster (`sudo .ci/slurm-up.sh`; CI starts one), end to end through `train.py`: the README's
SLURM sweep on CPU, a sweep over devices (each job its own shape; the 2-task DDP job bitwise equal to a local
`device=ddp_cpu` run), launcher mistakes, pre-emption (`scontrol requeue`, USR2, USR1) and a time limit, each
continuing exactly in place.

A requeued job waits ~2 minutes before SLURM starts it again (its begin time); `Sweep.hurry` moves that to now
(`scontrol update StartTime=now`) so these tests take seconds, not minutes: what is tested is the same."""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, assert_refused, run_train, scalars

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NAME = "echo-lstm-test"  # the tests' SLURM jobs: found, and cancelled after each test, by this name
SLURM = ["hydra/launcher=slurm", f"hydra.launcher.name={NAME}"]
SMALL = [o for o in TINY if not o.startswith("data.batch_size")] + ["data.batch_size=4"]
# 30000 steps, ~55 s of training on this project's 2-core VM (2026-12-02; 200 epochs took 22 s there, no longer
# enough): long enough to be interrupted anywhere, and for a time limit of a minute (whose warning SLURM sends within
# 30 s of a start, see below) to interrupt it with room.
LONG = [o for o in TINY if not o.startswith("trainer.max_epochs")] + \
    ["trainer.max_epochs=500", "callbacks.early_stopping=null", "seed=5"]
LONG_STEPS = 500 * 60  # epochs x chunks per epoch (TINY: 600 bits, 2 streams, chunks of 5)
ACCOUNTING = "Slurm accounting storage is disabled"  # sacct's own line on a cluster without accounting (CI's)


def squeue(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def squeue_job() -> str:
    """The test's one running job (these tests run one at a time)."""
    (job,) = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", NAME, "-o", "%i"], capture_output=True,
                            text=True).stdout.split()
    return job


@pytest.fixture(autouse=True)
def no_job_left():
    yield
    with contextlib.suppress(OSError):  # a failed test's job does not block the next
        subprocess.run(["scancel", "-n", NAME], capture_output=True)


class Sweep:
    """`python train.py -m hydra/launcher=slurm ...` in the background, and what its jobs left."""

    def __init__(self, tmp_path: Path, *overrides: str):
        self.dir = tmp_path / "sweep"
        self.out, self.err = open(tmp_path / "out.txt", "w+"), open(tmp_path / "err.txt", "w+")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", *SLURM, *overrides,
                                      f"hydra.sweep.dir={self.dir}"], cwd=tmp_path, stdout=self.out, stderr=self.err)

    def jobs(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def wait_for(self, path: Path, timeout: float = 120) -> Path:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, f"no {path}\n{self.finish().stderr}"
            time.sleep(0.1)
        return path

    def job_id(self) -> str:
        return self.wait_for(self.dir / "0" / ".slurm_job_id").read_text().strip()

    def hurry(self, job: str, timeout: float = 300) -> int:
        """Until the sweep ends: each time the job waits to be started again, start it now. Returns how often."""
        deadline, requeues = time.monotonic() + timeout, 0
        while self.proc.poll() is None and time.monotonic() < deadline:
            if squeue(job) == "PENDING":
                if subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                                  capture_output=True).returncode == 0:
                    requeues += 1
                    while squeue(job) == "PENDING" and time.monotonic() < deadline:
                        time.sleep(0.2)
            time.sleep(0.2)
        return requeues

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        self.proc.wait(timeout=timeout)
        self.out.seek(0), self.err.seek(0)
        err = "\n".join(line for line in self.err.read().splitlines() if line.strip() != ACCOUNTING)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.out.read(), err)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = run_train(*LONG, run_dir=run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def test_the_readme_sweep_runs_on_cpu_with_no_gpu_request(tmp_path, ok):
    sweep = Sweep(tmp_path, "layers=1,2", *TINY)
    proc = ok(sweep.finish())
    assert [j.name for j in sweep.jobs()] == ["0_layers=1", "1_layers=2"]
    assert all((j / "checkpoints" / "last.ckpt").is_file() for j in sweep.jobs())
    assert (sweep.dir / "summary.md").read_text().count("| completed |") == 2
    scripts = list((sweep.dir / ".submitit").rglob("*_submission.sh"))
    assert scripts and not any("gpu" in s.read_text() for s in scripts)  # a CPU job asks for no GPU
    assert "error" not in proc.stderr.lower()


def test_a_sweep_over_devices_shapes_each_job_and_ddp_equals_a_local_run(tmp_path, ok):
    sweep = Sweep(tmp_path, "device=cpu,ddp_cpu", *SMALL, "seed=11")
    local = tmp_path / "local"
    ok(run_train(*SMALL, "device=ddp_cpu", "seed=11", run_dir=local))
    proc = ok(sweep.finish())
    one, two = sweep.jobs()
    assert (one.name, two.name) == ("0_device=cpu", "1_device=ddp_cpu")
    tasks = {re.search(r"--ntasks-per-node=(\d+)", s.read_text())[1]
             for s in (sweep.dir / ".submitit").rglob("*_submission.sh")}
    assert tasks == {"1", "2"}  # one SLURM array per shape
    assert max_difference(two / "checkpoints" / "last.ckpt", local / "checkpoints" / "last.ckpt") == 0.0
    # Rank 1 (the second srun task) wrote nothing: one set of Hydra files, each log line once, one summary line.
    assert sorted(p.name for p in (two / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    log = (two / "train.log").read_text()
    assert log.count("step 16 (epoch 0)") == 1
    logs = {p.name: p.read_text() for p in (sweep.dir / ".submitit").rglob("*_log.out")}
    rank0 = [text for name, text in logs.items() if name.endswith("_0_log.out") and "device=ddp_cpu" in text]
    rank1 = [text for name, text in logs.items() if name.endswith("_1_log.out")]
    assert len(rank0) == len(rank1) == 1 and "stopped at step" in rank0[0]  # the job's line: rank 0's
    assert "stopped at step" not in rank1[0]
    assert proc.stdout.count("| completed |") == 2


@pytest.mark.parametrize("args,named", [
    (["hydra.launcher.partition=nosuch"], "hydra.launcher.partition=nosuch"),
    (["device=gpu"], "hydra.launcher.gpus_per_node=1"),  # this cluster has no GPUs: sbatch refuses
    (["device=ddp_cpu", "device.devices=auto"], "hydra.launcher.tasks_per_node=auto"),  # tasks: a number
], ids=["partition", "gres", "devices"])
def test_launcher_mistakes_are_one_line_and_leave_nothing_claimed(tmp_path, args, named):
    sweep = Sweep(tmp_path, "layers=1,2", *TINY, *args)
    assert_refused(sweep.finish(timeout=120), named)
    assert not sweep.dir.exists()


def continued(job_dir: Path) -> tuple[list[int], list[int]]:
    """(the steps the job stopped at when signalled, the steps its requeued self continued from), from train.log."""
    log = (job_dir / "train.log").read_text()
    stopped = [int(s) for s in re.findall(r"(?:requeued|stopped) by \w+ at step (\d+)", log)]
    went_on = [int(s) for s in re.findall(r"continuing .* from step (\d+)", log)]
    assert stopped and went_on, log[-3000:]
    return stopped, went_on


def assert_exact(job_dir: Path, uninterrupted: Path, what: str) -> None:
    stopped, went_on = continued(job_dir)
    diff = max_difference(job_dir / "checkpoints" / "last.ckpt", uninterrupted / "checkpoints" / "last.ckpt")
    print(f"{what}: stopped at step(s) {stopped}, continued from step(s) {went_on}, "
          f"max |w - w_uninterrupted| = {diff}")
    assert stopped == went_on and all(0 < s < LONG_STEPS for s in stopped)
    assert diff == 0.0
    ours, theirs = scalars(job_dir), scalars(uninterrupted)  # (every event file of the job dir)
    for tag in ("train/loss", "val/acc"):
        assert ours[tag] == theirs[tag], tag  # every step once, none missing, the same values


@pytest.mark.parametrize("how", ["scontrol-requeue", "USR2", "USR1", "USR2-at-start"])
def test_a_preempted_job_continues_exactly_where_it_stopped(tmp_path, uninterrupted, ok, how):
    sweep, label = Sweep(tmp_path, *LONG), how
    if how == "USR2-at-start":  # as soon as the job's Hydra files exist: before training starts (imports take s)
        sweep.wait_for(sweep.dir / "0" / ".hydra" / "config.yaml")
        job = squeue_job()
        how = "USR2"
    else:
        job = sweep.job_id()
        sweep.wait_for(sweep.dir / "0" / "checkpoints" / "last.ckpt")
        time.sleep(random.Random(how).uniform(0, 3))  # a random point of the run
    command = ["scontrol", "requeue", job] if how == "scontrol-requeue" else ["scancel", f"--signal={how}", job]
    subprocess.run(command, check=True)
    assert sweep.hurry(job) == 1
    ok(sweep.finish())
    assert_exact(sweep.dir / "0", uninterrupted, label)


def test_a_time_limit_requeues_and_the_job_continues_exactly(tmp_path, uninterrupted, ok):
    # submitit asks SLURM for USR2 signal_delay_s before the limit; slurmctld checks every 30 s and sends it at the
    # first check past (limit - delay - 30 s): here within 30 s of every start, however early (before training
    # even began: then the run stops at its first block boundary). Each start goes further, until the end.
    sweep = Sweep(tmp_path, *LONG, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=50")
    job = sweep.job_id()
    assert sweep.hurry(job) >= 1
    ok(sweep.finish())
    assert "requeued by SIGUSR2" in (sweep.dir / "0" / "train.log").read_text()
    assert_exact(sweep.dir / "0", uninterrupted, "time limit")


def test_a_requeued_job_whose_checkpoint_is_foreign_is_refused(tmp_path, uninterrupted):
    sweep = Sweep(tmp_path, *LONG)
    job = sweep.job_id()
    last = sweep.wait_for(sweep.dir / "0" / "checkpoints" / "last.ckpt")
    subprocess.run(["scontrol", "requeuehold", job], check=True)  # requeued, and held until released
    deadline = time.monotonic() + 120
    while "SLURM job" not in (sweep.dir / "0" / "train.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)  # its stop at a block boundary is logged
    last.write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes())  # another run's
    subprocess.run(["scontrol", "release", job], check=True)
    sweep.hurry(job)
    proc = sweep.finish()
    line = assert_refused(proc, "job 0", "foreign checkpoint")
    assert "saved by no SLURM job" in line
    assert last.is_file()  # the job's dir is kept as it was
