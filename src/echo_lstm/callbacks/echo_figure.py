"""The tutorial's figure of the current chunk, every `every_n_steps` chunks and at the last step.

Drawn in the training process (echo_lstm/machinery/viz/echo_figure.py: numpy + Pillow, ~3 ms), by one background thread,
so that it works the same under every launcher and under DDP (rank 0 draws), with no worker process, and costs
the training loop only the host copies: the last chunk of the batch (a few streams) and the training losses
since the last figure, taken when a figure is due. (Drawn inline, the figure cost ~4% of training at the
default cadence; the thread's numpy and zlib work mostly runs on another core.) Figures are written in step
order; the end of training waits for the last ones. With a TensorBoard logger the figure goes to the Images tab
(tag `echo/chunk`); without one it is written as a PNG file into `dirpath` (the run dir's `figures/`). A figure
that fails is logged, never fatal.
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


class EchoFigure(pl.Callback):
    def __init__(self, every_n_steps: int = 100, streams: int = 3, width: int = 800, height: int = 450,
                 dirpath: str | None = None, tag: str = "echo/chunk"):
        self.every_n_steps = every_n_steps
        self.streams = streams
        self.dirpath = Path(dirpath) if dirpath else None
        self.tag = tag
        self.drawer = EchoFigureDrawer(width, height)
        self.written: list[int] = []  # steps of the figures written in this fit
        self.failed = 0
        self._last_step = 0
        self._last_chunk: dict[str, torch.Tensor] | None = None  # the latest batch's last chunk (references)
        self._steps: list[int] = []  # losses since the last figure, on the device
        self._losses: list[torch.Tensor] = []
        self._host_steps = np.zeros(0, dtype=np.int64)  # every loss so far, on the host
        self._host_losses = np.zeros(0, dtype=np.float32)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # after a resume: the next figure is N steps on
        self.written, self.failed = [], 0
        if self.every_n_steps and trainer.is_global_zero:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-figure")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = self.every_n_steps
        if self._pool is None or not isinstance(outputs, dict) or "x" not in outputs:
            return
        step = trainer.global_step
        self._steps.append(step)
        self._losses.append(outputs["loss"].detach())
        self._last_chunk = {k: outputs[k] for k in ("x", "y", "pred")}
        if step // n > self._last_step // n:
            self._figure(trainer, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Always a figure of the final step (early stopping or the budget may end a run between two figures).
        step = trainer.global_step
        if self._pool is not None and self._last_chunk is not None and step > self._last_step:
            self._figure(trainer, step)
        self._finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish()

    def _finish(self, timeout: float = 30.0) -> None:
        """Wait for the figures in flight (bounded), then stop the thread; before the loggers are finalized."""
        if self._pool is not None:
            wait(self._pending, timeout=timeout)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, []

    def _figure(self, trainer: pl.Trainer, step: int) -> None:
        self._last_step = step
        # The only host copies: this chunk (a few streams) and the losses since the last figure.
        x, y, pred = (self._last_chunk[k][: self.streams].detach().cpu().numpy().copy() for k in ("x", "y", "pred"))
        if self._losses:
            losses = torch.stack(self._losses).float().cpu().numpy()
            self._host_losses = np.concatenate([self._host_losses, losses.reshape(-1)])
            self._host_steps = np.concatenate([self._host_steps, np.asarray(self._steps, dtype=np.int64)])
            self._steps, self._losses = [], []
        args = (trainer, x, y, pred, self._host_steps, self._host_losses, step, trainer.current_epoch)
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(self._draw, *args))

    def _draw(self, trainer: pl.Trainer, x, y, pred, steps, losses, step: int, epoch: int) -> None:
        try:
            png, height, width = self.drawer.draw_png(x, y, pred, steps, losses, f"step {step}, epoch {epoch}")
            self._write(trainer, png, height, width, step)
            self.written.append(step)
        except Exception:  # a figure must never stop training
            self.failed += 1
            log.exception(f"EchoFigure: the figure of step {step} failed")

    def _write(self, trainer: pl.Trainer, png: bytes, height: int, width: int, step: int) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                from tensorboard.compat.proto.summary_pb2 import Summary

                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
                logger.experiment.file_writer.add_summary(Summary(value=[Summary.Value(tag=self.tag, image=image)]),
                                                          step)
                return
        if self.dirpath is not None:  # no TensorBoard: a file per figure
            self.dirpath.mkdir(parents=True, exist_ok=True)
            (self.dirpath / f"step_{step:08d}.png").write_bytes(png)
