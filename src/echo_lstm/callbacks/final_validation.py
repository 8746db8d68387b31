"""Validate after the last training batch too, so every run ends with `val/*` of its final weights."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from echo_lstm.machinery.checkpoint import is_final_batch


class FinalValidation(pl.Callback):
    """Lightning validates every `val_check_interval` batches, which the last batch need not be. Asking it to
    stop at the last batch (`should_stop`) makes it validate there, as it does for early stopping."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if is_final_batch(trainer):
            trainer.should_stop = True
