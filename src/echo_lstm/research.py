"""Research callbacks: how fast a run learns the echo (`train/steps_to_echo`) and the tutorial's figure.

Both stay off the training hot path: `StepsToEcho` reads one scalar per training batch that the logger reads
anyway, and `EchoFigure` copies tensors to the host only every `every_n_steps` chunks and has them drawn in
a worker process (`echo_lstm.figure`, which also holds the drawing code; its names are re-exported here).
`job_threads` sizes torch's thread pool for a job of a parallel (joblib) sweep.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from echo_lstm import figure
from echo_lstm.figure import EchoFigureDrawer, draw_echo_figure

__all__ = ["EchoFigure", "EchoFigureDrawer", "StepsToEcho", "draw_echo_figure", "job_threads", "stopped_on_threshold"]

log = logging.getLogger(__name__)


class StepsToEcho(Callback):
    """`train/steps_to_echo`: the first global step (chunk count) at which the training boundary accuracy,
    averaged over the last `window` chunks, reaches `target_acc`.

    The boundary accuracy is the hard part of the echo (its targets lie in the previous chunk), so this is
    the step at which the carried state has learned it. It is read from `train/boundary_acc`, which the
    model returns (and logs) once per training batch as the mean over the batch's chunks; the window is
    therefore made of whole batches, each weighted by its chunks (rounded up to whole batches), and counts
    once it is full.

    Early stopping races this test: validation (the model after a batch) usually confirms the echo before
    the training accuracy (predictions made *while* learning, during the batch) does, and then training
    ends. If the run is stopped because early stopping's monitor reached its `stopping_threshold`, and the
    window has not confirmed the echo yet, the step at which training stopped is taken (`via` says which).
    If the run ends without either, the value is `inf` in `trainer.callback_metrics` (a sweeper minimising
    it sees the worst value) and nothing is written to TensorBoard.

    The value is written once, straight to the loggers, at the step it names (the x axis of the curves).
    Progress is saved in checkpoints (`state_dict`): a resumed run neither forgets a step already reached
    nor restarts its window.
    """

    def __init__(self, target_acc: float = 0.999, window: int = 32, monitor: str = "train/boundary_acc",
                 name: str = "train/steps_to_echo"):
        if window < 1:
            raise ValueError(f"window={window} must be >= 1 (chunks)")
        self.target_acc = target_acc
        self.window = window
        self.monitor = monitor
        self.name = name
        self.reached_at: int | None = None
        self.via: str | None = None  # "train window" | "early stopping"
        self._recent: deque[tuple[int, float]] = deque()  # (chunks, mean accuracy) of recent batches
        self._seen_step = 0  # global step at the end of the last batch seen

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, name=self.name)

    def window_acc(self) -> float | None:
        """Mean accuracy over the window, or None while it is not full yet."""
        total = sum(c for c, _ in self._recent)
        if total < self.window:
            return None
        return sum(c * a for c, a in self._recent) / total

    def update(self, step: int, acc: float) -> bool:
        """Record a batch that ended at global step `step`; True when the target is first reached."""
        chunks = step - self._seen_step
        self._seen_step = step
        if chunks <= 0 or self.reached_at is not None or math.isnan(acc):
            return False
        self._recent.append((chunks, acc))
        total = sum(c for c, _ in self._recent)
        while total - self._recent[0][0] >= self.window:  # keep just enough batches to cover the window
            total -= self._recent.popleft()[0]
        mean = self.window_acc()
        if mean is not None and mean >= self.target_acc:
            self.reached_at, self.via = step, "train window"
            return True
        return False

    def _write(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:  # rank 0 only (loggers are)
            logger.log_metrics({self.name: float(self.reached_at)}, step=self.reached_at)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen_step = trainer.global_step  # on resume: the checkpoint's step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.reached_at is not None:
            return
        value = outputs.get(self.monitor) if isinstance(outputs, dict) else None  # the model returns it
        if value is None:
            value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            self._seen_step = trainer.global_step
            return
        if self.update(trainer.global_step, float(value)):
            self._write(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after EarlyStopping decided (it comes earlier in the callback list), and before the
        # checkpoint of this validation is written (Lightning runs checkpoint callbacks last): so the
        # checkpoint holds the step.
        if self.reached_at is None and not trainer.sanity_checking and stopped_on_threshold(trainer):
            self.reached_at, self.via = trainer.global_step, "early stopping"
            self._write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reached_at is None and stopped_on_threshold(trainer):  # EarlyStopping came after us
            self.reached_at, self.via = trainer.global_step, "early stopping"
            self._write(trainer)
        # The value at the end of fit, whichever epoch (or session, before a resume) reached it.
        value = float(self.reached_at) if self.reached_at is not None else math.inf
        trainer.callback_metrics[self.name] = torch.tensor(value)

    def state_dict(self) -> dict[str, Any]:
        return {"reached_at": self.reached_at, "via": self.via, "recent": list(self._recent),
                "seen_step": self._seen_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached_at = state_dict.get("reached_at")
        self.via = state_dict.get("via")
        self._recent = deque(tuple(r) for r in state_dict.get("recent", []))
        self._seen_step = int(state_dict.get("seen_step", 0))


def stopped_on_threshold(trainer: pl.Trainer) -> bool:
    """Whether an EarlyStopping callback ended training because its monitor reached its stopping_threshold."""
    from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

    return any(es.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD
               for es in trainer.early_stopping_callbacks)


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """While starting a spawned process: keep it from re-importing this process's `__main__`.

    A spawned child normally runs the parent's main script (as `__mp_main__`) so that functions defined
    there can be unpickled. The figure worker only needs `echo_lstm.figure`; running the main script would
    cost it start-up time (train.py imports Hydra) and would re-run a user's script that calls `train()`
    without an `if __name__ == "__main__":` guard. So `__main__.__file__` and `__spec__`, the two things
    multiprocessing looks at, are hidden for the moment the child is started (a few ms).
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if "__file__" in saved:
            del main.__file__
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class EchoFigure(Callback):
    """Every `every_n_steps` chunks, the tutorial's figure of the current chunk into TensorBoard (Images tab).

    The chunk is the last one of the training batch that crosses a multiple of `every_n_steps` (the model
    returns its inputs, targets and predictions). Only then are they copied to the host: at most `streams`
    of them, and the training losses since the last figure, in one batched copy. Rank 0 only; does nothing
    without a TensorBoard logger.

    `background=True`: the figure is drawn and PNG-encoded in one worker process (`echo_lstm.figure`, which
    imports neither torch nor Lightning), started and warmed up in `on_train_start`, so that matplotlib
    never holds this process's GIL. The training process only pickles a few small arrays and, once the
    worker is done, writes the ready PNG as an image summary. It polls for the finished figure at the end
    of each training batch (one `Future.done()` call): all writes stay in the training thread, in step
    order, and a failure is logged there. At most one figure is in flight: one that falls due while the
    previous one is still being drawn is skipped (`skipped` counts them; logged once, at the end). At the
    end of training (or on an exception) the figure in flight is awaited for at most `wait_s` seconds,
    before the logger is finalized, and the worker is shut down. `background=False`: drawn inline.
    A figure that fails is logged and never stops training.
    """

    def __init__(self, every_n_steps: int = 100, streams: int = 5, width: int = 900, height: int = 500,
                 background: bool = True, tag: str = "echo/chunk", wait_s: float = 10.0):
        self.every_n_steps = every_n_steps
        self.streams = streams
        self.width, self.height = width, height
        self.background = background
        self.tag = tag
        self.wait_s = wait_s
        self.written = 0  # figures written to TensorBoard
        self.skipped = 0  # figures due while the previous one was still being drawn
        self.failed = 0
        self._last_step = 0
        self._steps: list[int] = []  # steps of the losses below, since the last figure
        self._losses: list[torch.Tensor] = []  # on the device, until a figure needs them
        self._host_steps = np.zeros(0, dtype=np.int64)  # all of them, on the host
        self._host_losses = np.zeros(0, dtype=np.float32)
        self._pool: ProcessPoolExecutor | None = None
        self._pending: tuple[Future, Any, int, float] | None = None  # (figure in flight, writer, step, since)
        self._warned = False
        self._finished = False  # _finish ran for this fit
        self._drawer: EchoFigureDrawer | None = None  # background=False only

    def _writer(self, trainer: pl.Trainer) -> Any:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        if not self._warned:
            log.warning("EchoFigure: no TensorBoard logger, so no figures")
            self._warned = True
        return None

    # ------------------------------------------------------------------------------------------ the worker
    def _start_worker(self, shape: tuple[int, int] | None) -> None:
        """Start the worker process and have it import matplotlib and build the figure (of `shape`: streams,
        chunk length, if known) now, while training starts."""
        import multiprocessing

        try:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=figure.init_worker, initargs=(os.getpid(),))
            with main_module_hidden():  # the first submit starts the worker process
                # A figure due before the warm-up is done waits for it in the pool's queue.
                self._pool.submit(figure.warm_up, self.width, self.height, *(shape or (0, 0)))
        except Exception:
            log.exception("EchoFigure: could not start the figure process, so no figures "
                          "(figure.background=false draws them in the training process)")
            self._stop_worker(kill=True)

    def _stop_worker(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:  # a figure that takes too long, or a broken pool: do not wait for the worker
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except Exception:
            log.exception("EchoFigure: shutting the figure process down failed")

    def _collect(self, block: bool = False, timeout: float | None = None) -> None:
        """Write the figure in flight if it is done; `block`: wait for it first, at most `timeout` seconds
        (None: no limit)."""
        if self._pending is None:
            return
        future, writer, step, submitted = self._pending
        if block:
            wait([future], timeout=timeout)
        if not future.done():
            return
        self._pending = None
        try:
            png, height, width = future.result()
        except Exception:
            self.failed += 1
            log.exception(f"EchoFigure: drawing the figure of step {step} failed")
            if isinstance(future.exception(), BrokenExecutor):
                log.warning("EchoFigure: the figure process died, so no more figures in this run")
                self._stop_worker(kill=True)
            return
        log.debug(f"EchoFigure: figure of step {step} drawn in {time.perf_counter() - submitted:.3f} s")
        self._write(writer, png, height, width, step)

    def _write(self, writer: Any, png: bytes, height: int, width: int, step: int) -> None:
        """One image summary from an encoded PNG (no decoding or re-encoding here)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        try:
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
            summary = Summary(value=[Summary.Value(tag=self.tag, image=image)])
            file_writer = writer._get_file_writer() if hasattr(writer, "_get_file_writer") else writer.file_writer
            file_writer.add_summary(summary, step)
            self.written += 1
        except Exception:  # a figure must never kill training
            self.failed += 1
            log.exception(f"EchoFigure: writing the figure of step {step} failed")

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # after a resume: the next figure is N steps on
        self.written = self.skipped = self.failed = 0
        self._finished = False
        n = self.every_n_steps
        if not n or not self.background or not trainer.is_global_zero or self._pool is not None:
            return
        if 0 < trainer.max_steps and trainer.max_steps // n <= self._last_step // n:
            return  # this run ends before its first figure
        if self._writer(trainer) is not None:
            self._start_worker(self._expected_shape(trainer, pl_module))

    def _expected_shape(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[int, int] | None:
        """(streams, chunk length) of the figures to come, from the model's and data's hyperparameters; None
        if unknown (a wrong guess only costs the first figure a rebuild)."""
        T = getattr(getattr(pl_module, "hparams", None), "truncated_backprop_length", None)
        batch_size = getattr(getattr(getattr(trainer, "datamodule", None), "hparams", None), "batch_size", None)
        if not isinstance(T, int) or not isinstance(batch_size, int):
            return None
        return min(self.streams, max(1, batch_size // max(1, getattr(trainer, "world_size", 1)))), T

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        n = self.every_n_steps
        if not n or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        step = trainer.global_step
        if "loss" in outputs:
            self._steps.append(step)
            self._losses.append(outputs["loss"].detach())
        self._collect()
        if step // n <= self._last_step // n:
            return
        self._last_step = step
        if self.background:
            if self._pool is None:  # no worker (no TensorBoard logger, or it failed): no figure
                return
            if self._pending is not None:  # the previous figure is still being drawn
                self.skipped += 1
                return
        writer = self._writer(trainer)
        if writer is None:
            return
        # The only host copies: this chunk (a few streams) and the losses since the last figure.
        x, y, pred = (outputs[k][: self.streams].detach().cpu().numpy() for k in ("x", "y", "pred"))
        if self._losses:
            losses = torch.stack(self._losses).float().cpu().numpy()
            self._host_losses = np.concatenate([self._host_losses, losses.reshape(-1)])
            self._host_steps = np.concatenate([self._host_steps, np.asarray(self._steps, dtype=np.int64)])
            self._steps, self._losses = [], []
        args = (x, y, pred, self._host_steps, self._host_losses, self.width, self.height,
                f"step {step}, epoch {trainer.current_epoch}")
        if not self.background:
            self._draw_inline(writer, step, *args)
            return
        try:
            self._pending = (self._pool.submit(figure.render_png, *args), writer, step, time.perf_counter())
        except Exception:  # the pool broke (the worker died) or was shut down
            self.failed += 1
            log.exception("EchoFigure: could not hand the figure to the figure process, so no more figures")
            self._stop_worker(kill=True)

    def _draw_inline(self, writer: Any, step: int, x, y, pred, steps, losses, width: int, height: int,
                     title: str) -> None:
        try:
            if self._drawer is None:
                self._drawer = EchoFigureDrawer(width, height)
            png, h, w = self._drawer.draw_png(x, y, pred, steps, losses, title)
        except Exception:  # a figure must never kill training
            self.failed += 1
            log.exception(f"EchoFigure: drawing the figure of step {step} failed")
            return
        self._write(writer, png, h, w, step)

    def wait(self, timeout: float | None = None) -> bool:
        """Write the figure in flight once it is drawn, waiting at most `timeout` seconds (None: no limit);
        True if none is left in flight."""
        self._collect(block=True, timeout=timeout)
        return self._pending is None

    def _finish(self) -> None:
        """End of training: the figure in flight (at most `wait_s` s), then the worker; before the logger
        is finalized (Lightning calls the callbacks' `on_train_end` / `on_exception` first)."""
        if self._finished:
            return
        self._finished = True
        if self._pending is not None and not self.wait(self.wait_s):
            step = self._pending[2]
            self._pending = None
            self.failed += 1
            log.warning(f"EchoFigure: the figure of step {step} was not drawn within {self.wait_s:g} s; "
                        "dropped")
            self._stop_worker(kill=True)
        self._stop_worker()
        if self.skipped or self.failed:
            log.info(f"EchoFigure: {self.written} figures written, {self.skipped} skipped (due while the "
                     f"previous one was still being drawn), {self.failed} failed")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException,
                     ) -> None:
        self._finish()


# ---------------------------------------------------------------------------------------------- sweeps
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_threads(requested: int) -> int:
    """Torch intra-op threads for this job: `requested` (0 = torch's default), capped in a parallel sweep.

    Under Hydra's joblib launcher, `n_jobs` jobs share the machine: each takes at most
    cores // parallel jobs threads (at least 1), so that they do not oversubscribe the cores.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    except Exception:
        launcher = None
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "JoblibLauncher" not in target:
        return requested
    cores = available_cores()
    n_jobs = int(launcher.get("n_jobs") or -1)
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores, -2 = all but 1
    share = max(1, cores // parallel)
    threads = share if requested <= 0 else min(requested, share)
    log.info(f"torch threads: {threads} (joblib sweep: {cores} cores / {parallel} parallel jobs)")
    return threads
