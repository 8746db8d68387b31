"""This app's SLURM launcher: Hydra's submitit launcher, each job shaped by its own config
(echo_lstm/machinery/slurm.py).

A Hydra plugin must live in the `hydra_plugins` package; Hydra imports this module at every start, so it imports
only Hydra's submitit plugin (which Hydra imports anyway) and the stdlib-only errors module.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from echo_lstm.machinery.errors import ConfigError

SHAPE = ("nodes", "tasks_per_node", "gpus_per_node")


class SlurmLauncher(SubmititSlurmLauncher):
    """Per-job shapes, quiet ranks > 0 and sbatch refusals as one line (echo_lstm/machinery/slurm.py says why)."""

    def __call__(self, sweep_overrides: list[str], *args: Any) -> Any:
        from echo_lstm.machinery.config import register_configs
        from echo_lstm.machinery.distributed import RANK_OVERRIDES, external_rank
        from echo_lstm.machinery.slurm import defer_signals

        defer_signals()  # a pre-emption warning from now on stops the run at a block boundary, however early
        register_configs()  # the resolvers of the job's config, in this fresh process
        if external_rank() > 0:
            sweep_overrides = [*sweep_overrides, *(o for o in RANK_OVERRIDES if o != "hydra.mode=RUN")]
        return super().__call__(sweep_overrides, *args)

    def shape(self, overrides: list[str]) -> tuple[Any, ...]:
        """The job's nodes, tasks per node and GPUs per node, from its own config."""
        from omegaconf import OmegaConf

        from echo_lstm.machinery import compat
        from echo_lstm.machinery import config as schema

        job = compat.submitit_job_config(self, overrides)
        devices = job.device.devices
        if not isinstance(devices, int):
            raise ConfigError("device.devices", devices, "must be a number under hydra/launcher=slurm: it sets "
                              "the job's SLURM tasks (one per device)")
        schema.validate_device(job.device)
        launcher = OmegaConf.to_container(job.hydra.launcher, resolve=True)
        return tuple(launcher.get(k) for k in SHAPE)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        import logging

        from echo_lstm.machinery import compat
        from echo_lstm.machinery.slurm import check_submission

        # submitit polls `sacct`, which a cluster without accounting lacks; it then warns at every poll and
        # reads the job's state from its files instead, which works: one warning per poll is noise
        logging.getLogger("submitit").addFilter(lambda record: "Bypassing sacct error" not in record.getMessage())
        shapes = [self.shape(list(o)) for o in job_overrides]  # every job checked before any is submitted
        for shape in dict.fromkeys(shapes):
            check_submission(compat.submitit_with_params(self, dict(zip(SHAPE, shape, strict=True))).params)
        if len(set(shapes)) == 1:
            return self._submit(shapes[0], job_overrides, initial_job_idx)
        with ThreadPoolExecutor(len(shapes)) as pool:  # one array per job: the shapes differ
            futures = [pool.submit(self._submit, shape, [o], initial_job_idx + i)
                       for i, (shape, o) in enumerate(zip(shapes, job_overrides, strict=True))]
            return [f.result()[0] for f in futures]

    def _submit(self, shape: tuple[Any, ...], job_overrides: Any, initial_job_idx: int) -> Any:
        from echo_lstm.machinery import compat

        launcher = compat.submitit_with_params(self, dict(zip(SHAPE, shape, strict=True)))
        return SubmititSlurmLauncher.launch(launcher, job_overrides, initial_job_idx)
