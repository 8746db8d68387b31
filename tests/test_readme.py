"""The README is the contract: CI runs exactly its set-up and test commands, and every other command in the README
and the docs runs as written (the cheap ones here, in a fresh copy of the repository; the others are listed with
the reason they are not run here)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Commands not run here, by their start, and why. Anything else in a ```bash block is run.
NOT_RUN = {
    "python3 -m venv .venv &&": "the set-up: .ci/run runs it (test_ci_runs_the_readme_setup_and_test_commands)",
    "python3 -m venv .venv-oldest": "the oldest-versions check: .ci/run runs it",
    "pytest": "the tests themselves",
    "ATEN_CPU_CAPABILITY=default ": "the tests themselves, on torch's portable kernels: .ci/run runs it",
    "python benchmarks/learning_spread.py": "minutes (8 seeds x 4 machines); tests/test_benchmark.py runs one seed",
    "tensorboard ": "a server",
    "pip install": "installs packages",
    "python benchmarks/throughput.py": "minutes; tests/test_benchmark.py runs it with few repeats",
    "python benchmarks/sweep_speedup.py": "minutes (two sweeps of 4 jobs of ~10 s); docs/research.md has its figures",
    "python train.py device=gpu": "needs a GPU" if not torch.cuda.is_available() else "",
    "python train.py device=multi_gpu": "needs GPUs (and 2 machines)",
    "python train.py -m layers=1,2,3,5": "~30 s; tests/test_research.py runs sweeps on a tiny series",
    "python train.py -m hydra/launcher=joblib": "parallel sweep; tests/test_research.py runs one",
    "python train.py experiment=tutorial_part": "100 epochs, minutes",
    "python train.py -m experiment=tbptt_horizon": "16 jobs, minutes (docs/research.md has its result)",
    "python train.py experiment=tbptt_horizon": "16 jobs, minutes (docs/research.md has its result)",
    "python train.py hparams_search=": "needs the optional Optuna extra; minutes",
    "python train.py -m layers=1,2,3,5 device=multi_gpu": "needs a SLURM cluster",
    "python train.py -m layers=1,2 hydra/launcher=slurm": "needs a SLURM cluster: tests/test_slurm.py runs it",
    "python train.py -m device=cpu,ddp_cpu data.batch_size=4 hydra/launcher=slurm":
        "needs a SLURM cluster: tests/test_slurm.py runs it",
    "sudo .ci/slurm-up.sh": "starts daemons as root: .ci/run starts the cluster and runs the tests",
    "python train.py -m hparams_search": "needs the optional Optuna extra",
    "python train.py -m layers=1,2 device=ddp_cpu": "~30 s; tests/test_devices.py runs a DDP multirun",
    "python train.py device=ddp_cpu data.batch_size=4": "tests/test_devices.py runs exactly this command",
    "python train.py layers=5": "~6300 steps, 15 s; tests/test_train_e2e.py runs layers=5 on a tiny series",
    "python train.py device=cpu": "the default: the same config as `python train.py` (test_device_cpu_is_the_default)",
}


def commands(path: Path) -> list[str]:
    """Every command line of the ```bash blocks (continuations joined, comments dropped)."""
    text = path.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def reason_not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start) and why), None)


def test_ci_runs_the_readme_setup_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    readme = commands(REPO / "README.md")
    quickstart = commands_of_section("Quickstart")
    setup = [c for c in quickstart if "pip install" in c]
    tests = [c for c in quickstart if "pytest" in c]
    assert setup and tests
    for command in setup + tests:
        ran = any(line.strip() == command or line.strip().startswith(command + " ||") for line in ci)
        assert ran, f"{command!r} is in the README's Quickstart but .ci/run does not run it"
    assert set(setup + tests) <= set(readme)


def commands_of_section(section: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", body, re.S) for line in block.splitlines()]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A fresh copy of the repository's tracked files: the commands run there as a newcomer would run them."""
    copy = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    args = [sys.executable if a in ("python", "python3") else a for a in args]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def cheap_commands(needing_a_run: bool) -> list[tuple[str, str]]:
    """(doc, command) of every command run here: those that continue or evaluate a run (they name `<run>`,
    `<file.ckpt>`, resume=latest), with `python train.py` that makes it; or all the others."""
    every = [(path.name, c) for path in DOCS for c in commands(path) if reason_not_run(c) is None]
    needs = [(d, c) for d, c in every if "<" in c or "resume=" in c or c.startswith("python eval.py")
             or c == "python train.py"]
    return needs if needing_a_run else [item for item in every if item not in needs]


def run_all(items: list[tuple[str, str]], cwd: Path, fill: dict[str, str] | None = None,
            parallel: int = 2) -> list[str]:
    """Run each command as written (placeholders filled); returns the failures."""

    def check(item: tuple[str, str]) -> str | None:
        doc, command = item
        for placeholder, value in (fill or {}).items():
            command = command.replace(placeholder, value)
        if "<" in command:
            return f"{doc}: {command!r} has a placeholder this test cannot fill"
        proc = run(command, cwd)
        if proc.returncode != 0:
            return f"{doc}: {command!r} exited {proc.returncode}: {proc.stderr.strip()[-600:]}"
        return None

    with ThreadPoolExecutor(parallel) as pool:
        return [f for f in pool.map(check, items) if f]


@pytest.mark.slow
def test_every_cheap_command_that_needs_no_run_works_as_written(repo_copy):
    items = cheap_commands(needing_a_run=False)
    assert len(items) >= 6, items
    failures = run_all(items, repo_copy)
    assert not failures, "\n".join(failures)


def test_device_cpu_is_the_default():
    from conftest import compose

    assert compose("device=cpu") == compose()


def test_every_command_not_run_here_says_why():
    for path in DOCS:
        for command in commands(path):
            reason = reason_not_run(command)
            assert reason is None or len(reason) > 5, command


def test_the_layouts_line_counts_are_current():
    # README, "Where things are": the core, the research callbacks, the machinery and all of src/, as counted now.
    src = REPO / "src"
    files = sorted(src.rglob("*.py"))

    def lines(paths):
        return sum(p.read_text().count("\n") for p in paths)

    core = [p for p in files if p.relative_to(src).parts[:2] in {("echo_lstm", n) for n in
            ("data", "models", "metrics.py", "training.py", "__init__.py")}]
    callbacks = [p for p in files if "callbacks" in p.parts]
    machinery = [p for p in files if p not in core and p not in callbacks]
    text = " ".join((REPO / "README.md").read_text().split())
    for figure in (f"({lines(core):,} lines", f"callbacks ({lines(callbacks):,})", f"{lines(machinery):,} lines",
                   f"{lines(files):,} lines in {len(files)} files"):
        assert figure in text, figure
