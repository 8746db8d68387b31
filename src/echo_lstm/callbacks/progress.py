"""The console while training: Lightning's tqdm bar, with the training batch's loss."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class TrainProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the training batch's loss (from training_step's outputs: the model does
    not `self.log` per batch) and without the validation bar, which would print a line per validation."""

    _loss: Any = None  # the latest batch's loss, on the device

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
