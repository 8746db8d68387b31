"""One line per validation in the run's log (`train.log`): the step, the epoch and the metrics so far."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger("echo_lstm.run")


class ValidationLog(pl.Callback):
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        values = {**getattr(pl_module, "last_train_metrics", {}), **trainer.callback_metrics}
        shown = " ".join(f"{k} {float(v):.4f}" for k, v in sorted(values.items()) if k != "step" and v.numel() == 1)
        log.info(f"step {trainer.global_step} (epoch {trainer.current_epoch}): {shown}")
