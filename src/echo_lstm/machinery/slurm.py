"""SLURM: the requeue after a pre-emption signal, and what the launcher (hydra_plugins/echo_lstm_slurm) needs.

`hydra/launcher=slurm` is Hydra's submitit launcher with three changes (conf/hydra/launcher/slurm.yaml):
- each job's tasks, GPUs and nodes come from that job's config, so a sweep over `device.*` submits jobs of
  different shapes (one SLURM array per shape); a shape SLURM cannot take, and any refused submission
  (`sbatch: error: ...`), is one `error:` line naming the launcher setting, before or instead of anything
  running, and the claimed sweep dir is released;
- the tasks of rank > 0 (srun starts one per device) run the job quietly: no Hydra files, no log file, no
  sweep records (distributed.RANK_OVERRIDES); rank 0 speaks for the job;
- pre-emption is handled by the run, not by submitit's re-submission from scratch (machinery/graceful_stop.py):
  on USR2 (submitit's `signal_delay_s` before the time limit), USR1 or SIGTERM the run finishes its block of
  chunks, saves `last.ckpt`, and on USR1/USR2 requeues its own job (`requeue`). SLURM restarts the job in the
  same dir, which continues from that checkpoint (training.starting_point).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import Any

from echo_lstm.machinery.errors import ConfigError, Raw

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # SIGTERM: SLURM itself requeues (preemption, scontrol)


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


early: int | None = None  # a requeue signal that came before training started: the first block boundary takes it


def defer_signals() -> None:
    """From the job's start until training takes them (machinery/graceful_stop.py): remember USR1/USR2/SIGTERM
    instead of dying (their default), letting submitit re-submit the job from scratch (its USR2 handler) or
    ignoring SIGTERM (submitit's), which would leave the run to SLURM's SIGKILL 30 s later."""
    def remember(signum: int, frame: Any) -> None:
        global early
        early = signum

    for sig in (*REQUEUE_SIGNALS, signal.SIGTERM):
        signal.signal(sig, remember)


def requeue() -> str | None:
    """Ask SLURM to requeue this job (it then ends this run: SIGTERM, which is ignored from here on); returns why
    not, or None."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job = os.environ["SLURM_JOB_ID"]
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["scontrol failed"])[-1]


# Launcher settings as sbatch options: what `sbatch --test-only` checks before anything is submitted.
SBATCH = {"partition": "--partition={}", "nodes": "--nodes={}", "tasks_per_node": "--ntasks-per-node={}",
          "gpus_per_node": "--gpus-per-node={}", "cpus_per_task": "--cpus-per-task={}", "mem_gb": "--mem={}G",
          "timeout_min": "--time={}", "qos": "--qos={}", "account": "--account={}", "constraint": "--constraint={}",
          "exclude": "--exclude={}"}
ABOUT = (("partition", "partition"), ("gpus_per_node", "gres"), ("gpus_per_node", "gpu"), ("timeout_min", "time limit"),
         ("mem_gb", "memory"), ("account", "account"), ("qos", "qos"), ("tasks_per_node", "node configuration"))


def check_submission(params: dict[str, Any]) -> None:
    """Ask SLURM whether it would take a job of these launcher settings (`sbatch --test-only`: nothing is
    submitted); a refusal is one line naming the setting it is about."""
    options = [form.format(params[key]) for key, form in SBATCH.items() if params.get(key) not in (None, "")]
    try:
        proc = subprocess.run(["sbatch", "--test-only", *options, "--wrap=true"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError("hydra/launcher", "slurm", f"sbatch cannot be run here ({error})") from None
    if proc.returncode != 0:
        raise sbatch_refusal(proc.stderr, params)


def sbatch_refusal(text: str, params: dict[str, Any]) -> ConfigError:
    """sbatch's error lines as one line naming the launcher setting they are about."""
    lines = [re.sub(r"^(sbatch: error: |allocation failure: )", "", line).strip() for line in text.splitlines()]
    reason = "; ".join(dict.fromkeys(line for line in lines if line)) or "sbatch failed"
    key = next((k for k, word in ABOUT if word in reason.lower()), None)
    if key is None:
        return ConfigError("hydra.launcher", "...", f"SLURM refuses the job: {reason}")
    return ConfigError(f"hydra.launcher.{key}", Raw(str(params.get(key))), f"SLURM refuses the job: {reason}")
