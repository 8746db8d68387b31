"""Devices and DDP: resolving the `device` config, and launching DDP ranks inside a Hydra job.

Lightning starts DDP ranks 1..N-1 by re-running the script. Under Hydra it replays `sys.argv`, which in a
multirun (`-m layers=1,2 device=ddp_cpu`) would start a whole new sweep in every rank. Here each rank
re-runs exactly *this job*: its own overrides, in run mode, in the job's own output directory, without
writing Hydra files of its own. So one run (or one sweep job) keeps one directory, whatever the devices.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from echo_lstm.config import ConfigError


def ddp_rank_command(script: Path, local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [sys.executable, str(script), *hc.overrides.task]
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 already wrote .hydra/
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra/job_logging=none",  # no per-rank log files in the run dir
        "hydra/hydra_logging=none",
    ]
    return command, hc.runtime.cwd


def use_job_relaunch(script: Path) -> None:
    """Make Lightning's DDP launcher start each rank as a copy of the current Hydra job."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = lambda local_rank: ddp_rank_command(script, local_rank)


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

        start_method = "spawn" if args["strategy"] == "ddp_spawn" else "popen"
        args["strategy"] = DDPStrategy(process_group_backend=backend, start_method=start_method)
    return args


DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """Leave no DDP state behind a job, so the next job of a sweep run in this process starts clean.

    Lightning's launcher exports MASTER_PORT, LOCAL_RANK, ... into this process and leaves the process
    group up; the next job would take `LOCAL_RANK` as "processes are launched externally" and join a dead
    group.
    """
    before = {k: os.environ.get(k) for k in DDP_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
