"""SLURM: the requeue after a pre-emption signal, and what the launcher (hydra_plugins/echo_lstm_slurm) needs.

`hydra/launcher=slurm` is Hydra's submitit launcher with three changes (conf/hydra/launcher/slurm.yaml):
- each job's tasks, GPUs and nodes come from that job's config, so a sweep over `device.*` submits jobs of
  different shapes (one SLURM array per shape); a shape SLURM cannot take, and any refused submission
  (`sbatch: error: ...`), is one `error:` line naming the launcher setting, before or instead of anything
  running, and the claimed sweep dir is released;
- the tasks of rank > 0 (srun starts one per device) run the job quietly: no Hydra files, no log file, no
  sweep records (distributed.RANK_OVERRIDES); rank 0 speaks for the job;
- pre-emption is handled by the run, not by submitit's re-submission from scratch (callbacks/graceful_stop.py):
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

from echo_lstm.errors import ConfigError

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # SIGTERM: SLURM itself requeues (preemption, scontrol)


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


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


def sbatch_refusal(error: BaseException, params: dict[str, Any]) -> ConfigError:
    """`sbatch: error: ...` as one line naming the launcher setting it is about."""
    text = " ".join(str(error).split())
    found = re.findall(r"sbatch: error: ([^\n]+?)(?= sbatch: |$)", text) or [text[-300:]]
    reason = found[-1].strip()
    lowered = reason.lower()
    key = next((k for k, words in (("partition", ("partition",)), ("gpus_per_node", ("gres", "gpu")),
                                   ("timeout_min", ("time limit",)), ("mem_gb", ("memory",)),
                                   ("account", ("account",)), ("qos", ("qos",)))
                if any(w in lowered for w in words)), None)
    if key is None:
        return ConfigError("hydra.launcher", "...", f"SLURM refused the job: {reason}")
    return ConfigError(f"hydra.launcher.{key}", params.get(key), f"SLURM refused the job: {reason}")
