"""The tutorial's figure of the current chunk, every `every_n_steps` chunks and at the last step.

Drawn in the training process (machinery/viz/echo_figure.py, ~3 ms) by one background thread: it works the same
under every launcher and under DDP (rank 0 draws), with no worker process, and costs the training loop only the
host copies, taken when a figure is due: the last chunk of the batch (a few streams) and the losses since the last
figure. (Drawn inline, the figure cost ~4% of training at the default cadence; the thread's numpy and zlib work
mostly runs on another core.) With a TensorBoard logger the figure goes to the Images tab (tag `echo/chunk`), else
to a PNG file in `dirpath` (the run dir's `figures/`). A figure that fails is logged, never fatal.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from echo_lstm.machinery.viz.echo_figure import EchoFigureDrawer

log = logging.getLogger(__name__)
TAG = "echo/chunk"


class EchoFigure(pl.Callback):
    def __init__(self, every_n_steps: int = 100, streams: int = 3, width: int = 800, height: int = 450,
                 dirpath: str | None = None):
        self.every_n_steps = every_n_steps
        self.streams = streams
        self.dirpath = Path(dirpath) if dirpath else None
        self.drawer = EchoFigureDrawer(width, height)
        self._last_step = 0
        self._chunk: tuple[torch.Tensor, ...] | None = None  # the latest batch's last chunk: x, y, pred
        self._steps: list[int] = []  # losses since the last figure, on the device
        self._losses: list[torch.Tensor] = []
        self._host_steps = np.zeros(0, dtype=np.int64)  # every loss so far, on the host
        self._host_losses = np.zeros(0, dtype=np.float32)
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future | None = None  # the latest figure: one worker draws them in step order

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # after a resume: the next figure is N steps on
        if self.every_n_steps and trainer.is_global_zero:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-figure")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pool is None or not isinstance(outputs, dict) or "x" not in outputs:
            return
        step, n = trainer.global_step, self.every_n_steps
        self._steps.append(step)
        self._losses.append(outputs["loss"].detach())
        self._chunk = (outputs["x"], outputs["y"], outputs["pred"])
        if step // n > self._last_step // n:
            self._figure(trainer, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Always a figure of the final step (early stopping or the budget may end a run between two figures).
        step = trainer.global_step
        if self._pool is not None and self._chunk is not None and step > self._last_step:
            self._figure(trainer, step)
        self._finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish()

    def _finish(self) -> None:
        """Wait for the figures in flight (at most 30 s), then stop the thread; before the loggers are finalized."""
        if self._pool is not None:
            wait([self._last] if self._last else [], timeout=30.0)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._last = None, None

    def _figure(self, trainer: pl.Trainer, step: int) -> None:
        self._last_step = step
        x, y, pred = (t[: self.streams].detach().cpu().numpy().copy() for t in self._chunk)
        if self._losses:
            losses = torch.stack(self._losses).float().cpu().numpy().reshape(-1)
            self._host_losses = np.concatenate([self._host_losses, losses])
            self._host_steps = np.concatenate([self._host_steps, np.asarray(self._steps, dtype=np.int64)])
            self._steps, self._losses = [], []
        args = (x, y, pred, self._host_steps, self._host_losses, f"step {step}, epoch {trainer.current_epoch}")
        self._last = self._pool.submit(self._draw, trainer, step, args)

    def _draw(self, trainer: pl.Trainer, step: int, args: tuple) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        try:
            png, height, width = self.drawer.draw_png(*args)
            tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            if tensorboard is not None:
                from tensorboard.compat.proto.summary_pb2 import Summary

                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
                summary = Summary(value=[Summary.Value(tag=TAG, image=image)])
                tensorboard.experiment.file_writer.add_summary(summary, step)
            elif self.dirpath is not None:  # no TensorBoard: a file per figure
                self.dirpath.mkdir(parents=True, exist_ok=True)
                (self.dirpath / f"step_{step:08d}.png").write_bytes(png)
        except Exception:  # a figure must never stop training
            log.exception(f"EchoFigure: the figure of step {step} failed")
