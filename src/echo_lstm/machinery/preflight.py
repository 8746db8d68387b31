"""Checks and claims before Hydra writes anything (a Hydra callback), so a refused run leaves nothing behind.

Hydra turns an exception raised in a callback into a warning and goes on, writing into a dir nobody checked or
claimed: so every exception here leaves as `errors.Escaped`, which Hydra does not catch, and cli.run reports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from echo_lstm.machinery import rundir
from echo_lstm.machinery.config import validate
from echo_lstm.machinery.distributed import is_launched_rank, is_secondary_rank
from echo_lstm.machinery.errors import ConfigError, Escaped, hydra_quote
from echo_lstm.machinery.loggers import check_available
from echo_lstm.machinery.sweeps.naming import record_swept_keys, swept_keys


def user_set(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def claim_run_dir(config: DictConfig, claim: rundir.Claim | None = None,
                  hint: str = " (to continue the run in it: resume=<dir>)") -> None:
    """Claim the run dir (`claim`, or a new one: rundir.claim_new) and point Hydra at it, before Hydra writes."""
    if claim is None:
        claim = rundir.claim_new(Path(config.hydra.run.dir), "hydra.run.dir",
                                 unique=not user_set(config, "hydra.run.dir"), hint=hint)
    rundir.current = claim
    with read_write(config.hydra.run):
        config.hydra.run.dir = str(claim.path)


def check_output_subdir(config: DictConfig) -> None:
    """Hydra's files (`hydra.output_subdir`, .hydra) go inside the run dir: `..` or an absolute path would overwrite
    a config.yaml of the user's beside it."""
    value = OmegaConf.select(config, "hydra.output_subdir")
    if value is not None:
        rundir.safe_subdir(value, "hydra.output_subdir")


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:  # before Hydra makes the run dir
        if is_launched_rank():
            return  # a DDP rank started by rank 0, which has checked and claimed everything
        try:
            check_output_subdir(config)
            tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
            if tasks > 1 and not user_set(config, "hydra.run.dir"):  # every task would pick its own time stamp
                raise ConfigError("hydra.run.dir", config.hydra.run.dir, f"must be named when srun starts {tasks} "
                                  "tasks of one run, e.g. hydra.run.dir='outputs/runs/slurm-${oc.env:SLURM_JOB_ID}'")
            if is_secondary_rank():
                return  # rank 0 checks and claims
            validate(config)
            check_available(config)  # the loggers' packages
            if rundir.current is None:  # (a resume claimed its dir before Hydra composed)
                path = Path(config.hydra.run.dir)  # claimed: a new dir, atomically, and locked (rundir.py)
                requeued = rundir.requeued_slurm_job(path)
                claim_run_dir(config, rundir.claim_existing(path, "hydra.run.dir", appends=("train.log",))
                              if requeued else None)
        except Exception as error:
            raise Escaped(error) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep dir claimed as a run's; the values are checked by each job (one bad point fails only its job).
        try:
            check_output_subdir(config)
            claim = rundir.claim_new(Path(config.hydra.sweep.dir), "hydra.sweep.dir",
                                     unique=not user_set(config, "hydra.sweep.dir"))
            # Every job's config is composed again from the Hydra overrides: the claimed dir must be one of them,
            # and each job's dir is claimed as Hydra resolves its name (rundir.claimed_job_dir).
            subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(claim.path)
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quote(str(claim.path))}")
                config.hydra.overrides.hydra.append(
                    f"hydra.sweep.subdir={hydra_quote('${claimed_job_dir:' + str(subdir) + '}')}")
            rundir.sweep = claim  # held (locked) while the sweep runs; a failing job removes only its own dir
            sweeper_params = OmegaConf.select(config, "hydra.sweeper.params")
            record_swept_keys(swept_keys(list(config.hydra.overrides.task), sweeper_params))
        except Exception as error:
            raise Escaped(error) from None
