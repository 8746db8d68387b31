"""Devices and DDP: the `device` config as Trainer arguments, and the processes of a DDP run on this machine.

Lightning would start DDP ranks 1..N-1 by re-running the script with `sys.argv` (in a multirun: a new sweep in
every rank). Here rank 0 starts each as a copy of *this job* (its overrides, in run mode, in the job's run dir,
writing no Hydra files or logs) with the standard variables, so Lightning sees externally launched processes (as
under torchrun) and only joins them. A rank is recognised by a marker only its parent can set, and rank 0 watches
its ranks, to say which one died. The ranks talk over loopback, but torch's rendezvous store listens on every
interface on MASTER_PORT while the run lasts (torch has no setting for it): keep untrusted networks away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from echo_lstm.machinery.errors import ConfigError, ProcessDied, signal_name

RANK_OF = "ECHO_LSTM_RANK_OF"  # set to rank 0's PID in the ranks it starts
RUN_DIR = "ECHO_LSTM_RANK_RUN_DIR"
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOO_SOCKET_IFNAME", RANK_OF,
           RUN_DIR)
# Variables that make Lightning treat a process as one rank of a bigger run. Honoured only from a launcher that
# manages processes (torchrun, SLURM, or rank 0 of this app), never when left over in a user's shell.
RANK_VARS = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "RANK")

entry_script: Path | None = None  # train.py / eval.py: what a rank runs (set by the entry point)


def is_launched_rank() -> bool:
    """Whether this process is a DDP rank > 0 started by rank 0 of this app (not just any LOCAL_RANK)."""
    return os.environ.get(RANK_OF) == str(os.getppid())


def managed_externally() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def external_rank() -> int:
    """This process's global rank when a launcher (srun, torchrun) started every rank, else 0."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("RANK") or 0)
    return int(os.environ.get("SLURM_PROCID") or 0) if managed_externally() else 0


def is_secondary_rank() -> bool:
    """A DDP rank > 0, however started (this app's rank 0, srun, torchrun): it writes no run-dir files, no logs,
    no summaries, and runs no sweeper; rank 0 speaks for the run."""
    return is_launched_rank() or external_rank() > 0


# What a rank > 0 adds to its command line: a plain run (an Optuna config sets hydra.mode=MULTIRUN: a rank would
# start a sweep of its own), no Hydra files, no log file.
RANK_OVERRIDES = ("hydra.mode=RUN", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none")


def drop_stray_rank_variables() -> list[str]:
    """Remove DDP rank variables no launcher set for this process; returns the ones removed."""
    if is_launched_rank() or managed_externally():
        return []
    stray = [k for k in RANK_VARS if k in os.environ]
    for key in stray:
        del os.environ[key]
    return stray


def trainer_device_args(device: dict[str, Any]) -> dict[str, Any]:
    """`device.*` as Trainer arguments; refuses a GPU request on a machine without one."""
    import torch

    args = dict(device)
    backend = args.pop("process_group_backend", None)
    if args["accelerator"] in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError("device.accelerator", args["accelerator"],
                              "no CUDA GPU is visible on this machine; use device=cpu, device=ddp_cpu or device=auto")
        if isinstance(args["devices"], int) and args["devices"] > available:
            raise ConfigError("device.devices", args["devices"], f"only {available} GPU(s) are visible here")
    if str(args["strategy"]).startswith("ddp"):
        from pytorch_lightning.strategies import DDPStrategy

        args["strategy"] = DDPStrategy(process_group_backend=backend, start_method="popen")
    return args


class Ranks:
    """Ranks 1..N-1 of this machine, started and watched by rank 0 (see the module docstring)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.died: tuple[int, int] | None = None  # (local rank, exit status) of the first rank that failed
        self._done = threading.Event()

    def start(self, trainer: Any, run_dir: Path, strategy: str) -> None:
        """Start the other ranks if Lightning would otherwise start them itself."""
        from hydra.core.hydra_config import HydraConfig

        local = trainer.num_devices
        if trainer.world_size <= 1 or local <= 1 or strategy != "ddp" or is_launched_rank() \
                or not HydraConfig.initialized():
            return
        env = trainer.strategy.cluster_environment
        if env.creates_processes_externally:  # torchrun, SLURM: they started every rank
            return
        hc = HydraConfig.get()
        shared = {"MASTER_ADDR": env.main_address, "MASTER_PORT": str(env.main_port), "NODE_RANK": str(env.node_rank()),
                  "WORLD_SIZE": str(trainer.world_size), RUN_DIR: str(run_dir), RANK_OF: str(os.getpid())}
        if env.main_address in ("127.0.0.1", "localhost") and trainer.num_nodes == 1:
            shared["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
        os.environ.update({k: v for k, v in shared.items() if k not in (RANK_OF, RUN_DIR)}, LOCAL_RANK="0")
        searchpath = [o for o in hc.overrides.hydra if o.split("=", 1)[0] == "hydra.searchpath"]  # config dirs
        command = [sys.executable, str(entry_script), *hc.overrides.task, *searchpath,
                   f"hydra.run.dir=${{oc.env:{RUN_DIR}}}", *RANK_OVERRIDES]
        for rank in range(1, local):
            self.procs.append(subprocess.Popen([*command, f"hydra.job.name={hc.job.name}_rank{rank}"],
                                               env={**os.environ, **shared, "LOCAL_RANK": str(rank)},
                                               cwd=hc.runtime.cwd))
        threading.Thread(target=self._observe, name="echo-lstm-ranks", daemon=True).start()

    def _check(self) -> tuple[int, int] | None:
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code not in (None, 0) and self.died is None:
                self.died = (rank, code)
        return self.died

    def _observe(self) -> None:
        while not self._done.wait(0.2):
            # Rank 0 normally fails at its next collective after a rank died; should it hang instead, end it.
            if self._check() is not None and not self._done.wait(60):
                print(f"error: {self.death()}", file=sys.stderr, flush=True)
                os._exit(ProcessDied.exit_code)

    def dead(self, timeout: float = 5.0) -> bool:
        """After rank 0 failed: whether another rank died (the cause), waiting a little for its exit to show."""
        deadline = time.monotonic() + timeout
        while self.procs and self._check() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.died is not None

    def death(self) -> str:
        rank, code = self.died
        how = f"was killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"
        return f"DDP process of rank {rank} (pid {self.procs[rank - 1].pid}) {how}"

    def stop(self, failed: bool) -> None:
        """End of the run: wait for the ranks (they finish fit with rank 0), or stop them after a failure."""
        self._done.set()
        for proc in self.procs:
            if failed and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (10 if failed else 120)
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def job_scope() -> Iterator[Ranks]:
    """The DDP ranks of one job, and no DDP state left behind it (the next job of a sweep starts clean)."""
    import torch.distributed as dist

    before = {k: os.environ.get(k) for k in DDP_ENV}
    ranks = Ranks()
    failed = True
    try:
        yield ranks
        failed = False
    finally:
        ranks.stop(failed)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
