"""Lightning callbacks the library lacks in the form this project needs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class TrainProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the training batch's loss (from training_step's outputs: the model
    does not `self.log` per batch) and without the validation bar, which would print a line per (frequent)
    validation."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._loss: Any = None

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        if isinstance(outputs, dict):
            self._loss = outputs.get("loss")
        super().on_train_batch_end(trainer, pl_module, outputs, *args)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            metrics["train/loss"] = f"{float(self._loss):.3f}"  # read only when the bar refreshes
        return metrics


def is_final_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch just trained is the run's last one (max_steps reached, or the last epoch's end)."""
    return (0 < trainer.max_steps <= trainer.global_step) or (
        trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        and trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
    )


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended, by its own test."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return not epoch_loop._skip_next_val and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


class FinalValidation(pl.Callback):
    """Validate after the last training batch too, so every run ends with `val/*` of its final weights.

    Lightning validates every `val_check_interval` batches, which the last batch need not be. Asking it to
    stop at the last batch (`should_stop`) makes it validate there, as it does for early stopping.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if is_final_batch(trainer):
            trainer.should_stop = True


class EchoCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best by a monitored metric, `last.ckpt` at every validation) plus `last.ckpt` at a
    cadence in optimizer steps and at the very last training batch.

    A training batch holds several chunks, so `global_step` advances by `chunks_per_batch` per batch and
    Lightning's `every_n_train_steps` test (`global_step % n == 0`) would rarely hold: here `last.ckpt` is
    written whenever the step count crosses a multiple of `every_n_steps`. All saves happen at the end of a
    training batch or of a validation, where Lightning's loop state is consistent, so every checkpoint
    resumes exactly (a save in `on_train_end` would record the interrupted epoch as finished).
    """

    def __init__(self, every_n_steps: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kw: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kw)
        n, step = self.every_n_steps, trainer.global_step
        crossed = n and step // n > self._last_global_step_saved // n
        if crossed or is_final_batch(trainer):
            self.save_last_at_batch_end(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            # Lightning 2.6 writes last.ckpt at a validation only along with a new best; here: always.
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def save_last_at_batch_end(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt at the end of a training batch, unless a validation follows: then its end saves.

        Lightning resumes a checkpoint written between a batch and its validation without that validation,
        so a kill in between would lose it for good."""
        if trainer.global_step > self._last_global_step_saved and not validation_follows(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Flush the event files first: everything logged up to this step is on disk before the checkpoint
        # that a resume starts from (which then drops anything logged later, see training.py).
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)


class StopRequested(Exception):
    """Raised after the checkpoint is saved, to leave `fit` at once (`should_stop` would validate first)."""

    def __init__(self, signum: int):
        super().__init__(f"stop requested by signal {signum}")
        self.signum = signum


class GracefulStop(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM: finish the current block, save `last.ckpt`, stop, exit non-zero.

    A second Ctrl-C exits at once. Under DDP the stop request is agreed by all processes after each
    training batch (one tiny all-reduce per batch), so they all save the same step together.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._stop_at_next_batch: int | None = None
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: Any) -> None:
        import os
        import signal

        if self.signal is not None and signum == signal.SIGINT:
            os._exit(128 + signum)  # second Ctrl-C: no more waiting
        self.signal = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        requested = self.signal
        if trainer.world_size > 1:
            import torch

            flag = torch.tensor([requested or 0], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = int(flag.item()) or None
        if requested is None:
            return
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, EchoCheckpoint):
            checkpoint.save_last_at_batch_end(trainer)
        self._stop_at_next_batch = requested

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # Leave before the next batch trains: by now Lightning has logged the saved step's metrics (and run
        # a validation if one was due there, as an uninterrupted run would). `trainer.should_stop` instead
        # would run an extra validation, which an uninterrupted run does not, so a resume would differ.
        if self._stop_at_next_batch is not None:
            raise StopRequested(self._stop_at_next_batch)
