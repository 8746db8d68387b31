"""Ctrl-C (SIGINT), SIGTERM or SIGHUP, and in a SLURM job SIGUSR1/SIGUSR2 (the pre-emption and time-limit warnings):
finish the current block of chunks, save `last.ckpt` at that step, stop (training.py then requeues a SLURM job)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytorch_lightning as pl

from echo_lstm.machinery import slurm
from echo_lstm.machinery.checkpoint import LastCheckpoint
from echo_lstm.machinery.sweeps.stop import requested as sweep_stopped


class StopRequested(Exception):
    """Raised after the checkpoint is saved, to leave `fit` at once (`should_stop` would validate first)."""

    def __init__(self, signum: int):
        super().__init__(f"stop requested by signal {signum}")
        self.signum = signum


class GracefulStop(pl.Callback):
    """The first signal asks for a stop after the current training batch; a second Ctrl-C exits at once.

    Under DDP the stop request is agreed by all processes after each training batch (one tiny all-reduce per
    batch), so they all save the same step together. The caller turns `StopRequested` into its message.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._stop_at_next_batch: int | None = None
        self._previous: dict[int, Any] = {}
        self._sweep_dir: str | None = None  # in a sweep: where its stop is requested (sweeps/stop.py)

    def _request(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            os._exit(128 + signum)  # second Ctrl-C: no more waiting
        self.signal = signum

    def _take_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            warnings = (signal.SIGUSR1, signal.SIGUSR2) if os.environ.get("SLURM_JOB_ID") else ()  # SLURM's
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, *warnings):  # SIGHUP: the terminal closed
                self._previous.setdefault(sig, signal.signal(sig, self._request))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # From the start of fit: a Ctrl-C before the first batch is a stop like any other (Lightning would catch
        # its KeyboardInterrupt and exit on its own).
        from hydra.core.hydra_config import HydraConfig

        self._take_signals()
        if HydraConfig.initialized() and str(HydraConfig.get().mode).upper().endswith("MULTIRUN"):
            self._sweep_dir = str(HydraConfig.get().sweep.dir)
        if slurm.early is not None:  # SLURM's warning came while the job started: stop at the first boundary
            self.signal, slurm.early = slurm.early, None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_signals()  # again: Lightning installs its own SIGTERM handler between setup and here
        stopped = sweep_stopped(self._sweep_dir)
        if stopped is not None:  # the sweep was stopped while this job was starting: train nothing
            raise StopRequested(stopped)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        requested = self.signal or sweep_stopped(self._sweep_dir)
        if trainer.world_size > 1:
            import torch

            flag = torch.tensor([requested or 0], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = int(flag.item()) or None
        if requested is not None:
            for callback in trainer.callbacks:
                if isinstance(callback, LastCheckpoint):
                    callback.save_unless_validation_follows(trainer)
            self._stop_at_next_batch = requested

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # Leave before the next batch trains: by now Lightning has logged the saved step's metrics (and run a
        # validation if one was due there, as an uninterrupted run would). `trainer.should_stop` instead would
        # run an extra validation, which an uninterrupted run does not, so a resume would differ.
        if self._stop_at_next_batch is not None:
            raise StopRequested(self._stop_at_next_batch)
