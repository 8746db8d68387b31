"""`last.ckpt`, the resume point, and the IO of every checkpoint of a run.

`LastCheckpoint` saves at a cadence, after every validation and at the last batch, always where Lightning's loop
state is consistent, so every checkpoint resumes exactly. It subclasses Lightning's `Checkpoint` so that Lightning
runs it after the other callbacks (ModelCheckpoint, which keeps best-k): the file holds their state. A checkpoint
is data, never instructions: Lightning restores ModelCheckpoint's paths from it and later deletes the files they
name, so `AtomicCheckpointIO` drops foreign paths when loading and deletes only this run's checkpoint files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from echo_lstm.machinery import compat, rundir
from echo_lstm.machinery.errors import WriteFailed


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, then rundir.write_file: a kill at any moment leaves the old file or the new one, never a torn one.
    (Lightning's own save *moves* a file from the system temp dir: a copy when that is another filesystem.)"""
    import torch

    path = Path(path)
    existed = path.exists()
    buffer = io.BytesIO()  # (the checkpoint is held in memory once more while it is written)
    torch.save(obj, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_file(path, buffer.getvalue())
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise WriteFailed(path, reason, "the previous one is intact" if existed else "") from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for every checkpoint of a run (last and best-k): atomic saves, loads with
    `weights_only=True` minus foreign callback paths, and deletions only of this run's checkpoint files."""

    def __init__(self, checkpoints: Path):
        super().__init__()
        self.checkpoints = Path(checkpoints)  # <run dir>/checkpoints

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        import torch

        from echo_lstm.machinery.resume import drop_foreign_paths

        where = map_location if map_location is not None else (lambda storage, loc: storage)  # as Lightning's
        checkpoint = torch.load(path, map_location=where, weights_only=True)
        drop_foreign_paths(checkpoint, self.checkpoints)
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        # Lightning's removes recursively whatever it is given; here only a regular .ckpt file of this run's dir.
        if str(path).endswith(".ckpt") and rundir.own_file(path, self.checkpoints):
            os.unlink(path)


def is_final_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch just trained is the run's last one (max_steps reached, or the last epoch's end)."""
    return (0 < trainer.max_steps <= trainer.global_step) or (
        trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        and trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
    )


class LastCheckpoint(Checkpoint):
    """`<dirpath>/last.ckpt`, every `every_n_steps` optimizer steps (0: no cadence), after every validation and
    at the last training batch."""

    def __init__(self, dirpath: str, every_n_steps: int = 0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.saved_step = -1  # global step of the last save (of this fit)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved_step = trainer.global_step  # resumed: that step is saved already
        if trainer.is_global_zero and self.path.parent.is_dir():  # the temp files of saves that were killed
            for stale in self.path.parent.glob(".*.tmp-*"):  # (the run's lock: no other process writes here)
                if not stale.name.endswith(f".tmp-{os.getpid()}") and rundir.own_file(stale, self.path.parent):
                    stale.unlink()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        n, step = self.every_n_steps, trainer.global_step
        if (n and step // n > max(self.saved_step, 0) // n) or is_final_batch(trainer):
            self.save_unless_validation_follows(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def save_unless_validation_follows(self, trainer: pl.Trainer) -> None:
        """Save now, unless a validation follows this batch: Lightning would resume such a checkpoint without that
        validation, so its end saves instead."""
        if not compat.validation_follows(trainer):
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Flush the loggers first: what a resume starts from is on disk before the checkpoint that names it."""
        if trainer.global_step == self.saved_step or trainer.fast_dev_run:
            return
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step
