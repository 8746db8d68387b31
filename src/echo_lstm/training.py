"""One training run from a validated config: build the data module, the model, loggers, callbacks and the Trainer
(each by `hydra.utils.instantiate` from its config group), fit, and return what the run computed.

Imported only once the config has passed `config.validate`, so `--help` and config errors never pay for torch
and Lightning. The machinery it calls (refusals, resume, DDP ranks, stops, the summary) is echo_lstm/machinery/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_lstm import metrics as registry
from echo_lstm.machinery.errors import ConfigError, Diverged, Finished, ProcessDied, Raw, disk_error, relpath
from echo_lstm.machinery.resume import starting_point
from echo_lstm.machinery.run import (
    RunResult,
    batches_per_epoch,
    built,
    checkpoint_note,
    drop_disabled,
    keep_freed_memory,
    quiet_libraries,
    resume_command,
    say,
    share,
    stopped,
    summarize,
    trainer_refusal,
)
from echo_lstm.machinery.rundir import SLURM_JOB


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """`trainer.*` as given to `pl.Trainer`, minus what the model applies itself (clipping, per chunk)."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    args.pop("_target_", None)
    return {**args, "gradient_clip_val": None, "gradient_clip_algorithm": None}


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """The data module and the model (`instantiate(cfg.data)`, `instantiate(cfg.model)`), with the optimizer built
    once, so that a setting any of them refuses is one line naming it, before the Trainer starts."""
    import torch
    from hydra.utils import instantiate

    datamodule = built("data", cfg.data, lambda: instantiate(cfg.data))
    model = built("model", cfg.model, lambda: instantiate(cfg.model))
    optimizer = built("optimizer", cfg.optimizer, model.configure_optimizers)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError("optimizer._target_", cfg.optimizer._target_, "must name a torch.optim.Optimizer class")
    return datamodule, model


def train(cfg: DictConfig, callbacks: list[Any] | None = None) -> RunResult:
    """Train from a validated config (train.py calls it); `callbacks` are added to the configured ones (e.g. a
    probe). Writes `<run dir>/result.json` (RunResult) at the end, on rank 0. A full disk or a denied write anywhere
    is a WriteFailed naming the file (or the run dir's event file, when the writer does not say)."""
    try:
        return _train(cfg, callbacks)
    except OSError as error:
        written = disk_error(error, f"{cfg.run_dir}/events.out.tfevents.* (TensorBoard)")
        if written is None:
            raise
        raise written from None


def _train(cfg: DictConfig, callbacks: list[Any] | None) -> RunResult:
    from echo_lstm.machinery import distributed

    # What can be refused with torch alone, before Lightning is imported (seconds): the checkpoint, the devices.
    run_dir = Path(cfg.run_dir)
    start = starting_point(cfg, run_dir)
    device = distributed.trainer_device_args(OmegaConf.to_container(cfg.device, resolve=True))
    quiet_libraries()
    import pytorch_lightning as pl
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from echo_lstm.machinery.checkpoint import AtomicCheckpointIO
    from echo_lstm.machinery.graceful_stop import StopRequested
    from echo_lstm.machinery.loggers import build_loggers, log_hparams
    from echo_lstm.machinery.sweeps.threads import job_threads, parallel_jobs

    started = time.perf_counter()
    keep_freed_memory()
    threads = job_threads(cfg.threads)  # capped per job in a parallel (joblib) sweep
    if threads > 0:
        torch.set_num_threads(threads)
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, model = build(cfg)
    # Resuming appends to the same TensorBoard run; purge_step tells TensorBoard to drop what the interrupted run
    # logged after its last checkpoint, so no step appears twice.
    loggers = build_loggers(cfg, **({"purge_step": start.step + 1} if start.in_place else {}))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None] + list(callbacks or [])
    args = trainer_arguments(cfg)
    if parallel_jobs() > 1:  # progress bars of parallel jobs would interleave: each job prints one line at its end
        args["enable_progress_bar"] = False
    callbacks = drop_disabled(callbacks, args)
    if args.get("enable_checkpointing") is None and not any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks):
        args["enable_checkpointing"] = False  # no checkpoint callback configured: none of Lightning's either
    n_train = len(datamodule.train_dataloader())
    if isinstance(args.get("val_check_interval"), int):  # fewer batches than that: once per epoch (warned)
        args["val_check_interval"] = min(args["val_check_interval"], batches_per_epoch(args, n_train))
    for key, n in (("limit_train_batches", n_train), ("limit_val_batches", 1)):
        if isinstance(args.get(key), float) and 0 < args[key] < 1:  # a share of an epoch: at least one batch
            args[key] = share(args[key], n)
    plugins: list[Any] = [AtomicCheckpointIO(run_dir / "checkpoints")]  # see machinery/checkpoint.py
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        # Lightning's own SLURM requeue saves `hpc_ckpt_<n>.ckpt` inside a block of chunks, which cannot be
        # continued exactly: off. The stop at a block boundary and the requeue are machinery/graceful_stop.py's.
        try:
            plugins.append(SLURMEnvironment(auto_requeue=False))
        except RuntimeError as error:  # Lightning refuses srun's layout (e.g. --ntasks instead of --ntasks-per-node)
            raise ConfigError("srun", Raw(f"--ntasks={os.environ.get('SLURM_NTASKS')}"),
                              f"Lightning refuses it: {str(error).strip().splitlines()[0]}") from None
    try:
        trainer = instantiate(cfg.trainer, **device, **args, logger=loggers or False, callbacks=callbacks,
                              default_root_dir=str(run_dir), use_distributed_sampler=False, plugins=plugins,
                              _convert_="all")
    except (MisconfigurationException, ValueError, TypeError, InstantiationException) as error:
        raise trainer_refusal(error.__cause__ or error if isinstance(error, InstantiationException) else error,
                              cfg) from None
    if os.environ.get("SLURM_JOB_ID") and trainer.is_global_zero:
        from echo_lstm.machinery.rundir import write_file

        write_file(run_dir / SLURM_JOB, os.environ["SLURM_JOB_ID"] + "\n")
    if trainer.is_global_zero:
        if not start.in_place:  # a resumed run has them already
            log_hparams(trainer.loggers, cfg, registry.HPARAMS)
        if start.in_place:
            say(f"echo-lstm: continuing {relpath(run_dir)} from step {start.step} (epoch {start.epoch})")
        elif start.path is not None:
            say(f"echo-lstm: a new run from {relpath(start.path)} (step {start.step})")
    with distributed.job_scope() as ranks:
        ranks.start(trainer, run_dir, cfg.device.strategy)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=start.path and str(start.path))
        except StopRequested as stop:
            raise stopped(stop.signum, trainer, run_dir) from None
        except Diverged as error:
            raise Diverged(error.step, error.what, checkpoint_note(run_dir)) from None
        except Exception:
            if ranks.dead():
                note = f"{checkpoint_note(run_dir).capitalize()}; continue with: {resume_command(run_dir)}"
                raise ProcessDied(f"{ranks.death()}; the run stopped at about step {trainer.global_step}. {note}") \
                    from None
            raise
    if start.in_place and trainer.global_step == start.step:  # a resumed run that had ended: nothing trained
        if (run_dir / "result.json").is_file():  # its results stand; nothing of it changes
            raise Finished(f"{relpath(run_dir)} has nothing left to train at step {start.step} with these limits "
                           "(raise trainer.max_steps or trainer.max_epochs): nothing was changed")
        trainer.validate(model, datamodule=datamodule, verbose=False)  # killed before its result.json: recover it
    result = summarize(trainer, model, cfg, start, time.perf_counter() - started, run_dir)
    if start.path is not None and trainer.global_step == start.step and not result.metrics.get("val/acc"):
        result.stop_reason = "already complete"
    if trainer.is_global_zero:
        result.write()
    return result


