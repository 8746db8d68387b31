"""Lightning callbacks the library lacks in the form this project needs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class TrainProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar without the validation bar, which would print a line per (frequent) validation."""

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)


class EchoCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best by a monitored metric, `last.ckpt`) plus a cadence in optimizer steps.

    A training batch holds several chunks, so `global_step` advances by `chunks_per_batch` per batch and
    Lightning's `every_n_train_steps` test (`global_step % n == 0`) would rarely hold. Here `last.ckpt` is
    written whenever the step count crosses a multiple of `every_n_steps`, and once more when training ends.
    """

    def __init__(self, every_n_steps: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kw: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kw)
        n = self.every_n_steps
        if n and trainer.global_step // n > self._last_global_step_saved // n:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
