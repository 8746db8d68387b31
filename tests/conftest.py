"""Shared test helpers: compose configs like the app does, run the entry points as a user would, read TensorBoard."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # As the app does (`threads: 1`): this tiny model only loses from intra-op threads, and 2 cores shared with
    # subprocess runs make torch's spinning thread pool 100x slower.
    import torch

    torch.set_num_threads(1)


# A short run on a tiny series: enough to exercise every path, far too short to learn.
TINY = [
    "data.total_series_length=600",
    "data.batch_size=2",
    "data.truncated_backprop_length=5",
    "data.chunks_per_batch=4",
    "data.val_series_length=100",
    "trainer.max_epochs=2",
    "trainer.val_check_interval=4",
    "trainer.enable_progress_bar=false",
]


def compose(*overrides: str, run_dir: str | Path = "/tmp/echo-lstm-test", return_hydra_config: bool = False,
            config_name: str = "train"):
    """The app's config, composed with Hydra's compose API (no run, no output dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from echo_lstm.machinery.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        extra = [f"run_dir={run_dir}"] if config_name == "train" else []
        return hydra_compose(config_name, overrides=[*overrides, *extra], return_hydra_config=return_hydra_config)


def make_model(*overrides: str, **kwargs):
    """An EchoLSTM built from the app's config (the defaults' one home), e.g. make_model("layers=2")."""
    from hydra.utils import instantiate

    return instantiate(compose(*overrides).model, **kwargs)


def make_datamodule(*overrides: str):
    from hydra.utils import instantiate

    return instantiate(compose(*overrides).data)


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: float = 600, env: dict | None = None,
               ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_train(*overrides: str, run_dir: Path | None = None, cwd: Path = REPO, timeout: float = 600,
              env: dict | None = None, multirun: bool = False) -> subprocess.CompletedProcess:
    """`python train.py OVERRIDES` in a subprocess, exactly as a user runs it."""
    args = (["-m"] if multirun else []) + list(overrides)
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    return run_script("train.py", *args, cwd=cwd, timeout=timeout, env=env)


def fake_srun(tmp_path: Path) -> dict[str, str]:
    """An environment with an `srun` on PATH, as on every SLURM login node (Lightning then warns at each Trainer
    that it is not used): to check that such library chatter never reaches the console."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files directly under log_dir: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_files(root: Path) -> list[Path]:
    return sorted(root.rglob("events.out.tfevents.*"))


def assert_refused(proc: subprocess.CompletedProcess, *names: str, code: int = 2) -> str:
    """The whole error promise: the exit code, exactly one line on stderr and it starts with `error:`, it names
    what it must, no traceback, no Hydra hint. Returns the line."""
    out = proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, f"exit {proc.returncode}\n{out[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), out[-3000:]
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out, out[-3000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its content: to prove that a refused run touched nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def ok():
    """Assert a subprocess run succeeded, showing its output if not."""

    def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        output = f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, f"exit {proc.returncode}\n{output}"
        return proc

    return check


@functools.cache
def slurm_answers() -> str | None:
    """None if a SLURM cluster answers `sinfo` here, else why not (asked once per test process)."""
    import shutil

    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"sinfo failed: {(proc.stderr.strip().splitlines() or ['no node'])[-1]}"
    return None


def pytest_runtest_setup(item):
    # `slurm` tests need a cluster (sudo .ci/slurm-up.sh starts a one-node one). Without one they skip, except in
    # CI (CI=true), where .ci/run starts the cluster and a skip would hide that they did not run.
    if item.get_closest_marker("slurm") is not None:
        why = slurm_answers()
        if why is not None:
            message = f"no SLURM cluster answers ({why}); start one with `sudo .ci/slurm-up.sh`"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message}: under CI=true the slurm tests must run", pytrace=False)
            pytest.skip(message)
