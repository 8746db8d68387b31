"""Research callbacks: how fast a run learns the echo (`train/steps_to_echo`) and the tutorial's figure.

Both stay off the training hot path: `StepsToEcho` reads one scalar per training batch that the logger reads
anyway, and `EchoFigure` copies tensors to the host only every `every_n_steps` chunks and draws them in a
background thread. `job_threads` sizes torch's thread pool for a job of a parallel (joblib) sweep.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


class StepsToEcho(Callback):
    """`train/steps_to_echo`: the first global step (chunk count) at which the training boundary accuracy,
    averaged over the last `window` chunks, reaches `target_acc`.

    The boundary accuracy is the hard part of the echo (its targets lie in the previous chunk), so this is
    the step at which the carried state has learned it. It is read from `train/boundary_acc`, which the
    model logs once per training batch as the mean over the batch's chunks; the window is therefore made of
    whole batches, each weighted by its chunks (rounded up to whole batches), and counts once it is full.

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


class EchoFigureDrawer:
    """The tutorial's figure, drawn into an RGB uint8 array [height, width, 3].

    First panel: the training loss so far. Then, per stream, the chunk's time steps as bars: input (blue,
    height 1), target (red, 0.5), prediction (green, 0.3); a learned echo shows red and green bars that
    coincide. Matplotlib's object API with the Agg canvas (no pyplot: no global state, safe in a thread).
    The figure is built once and only its data change afterwards (a redraw costs a few tens of ms).
    """

    COLORS = (("input", "blue", 1.0), ("target", "red", 0.5), ("prediction", "green", 0.3))

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._key: tuple[int, int] | None = None

    def _build(self, streams: int, T: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        dpi = 100
        self.fig = Figure(figsize=(self.width / dpi, self.height / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        cols = 3
        rows = math.ceil((1 + streams) / cols)
        self.fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.88, wspace=0.25, hspace=0.45)
        ax = self.fig.add_subplot(rows, cols, 1)
        (self.loss_line,) = ax.plot([], [], color="tab:blue", linewidth=1)
        ax.set_title("train/loss", fontsize=8)
        ax.tick_params(labelsize=6)
        self.loss_ax = ax
        edges = np.arange(T + 1) - 0.5
        zeros = np.zeros(T)
        self.bars = []
        for s in range(streams):
            ax = self.fig.add_subplot(rows, cols, s + 2)
            self.bars.append([ax.stairs(zeros, edges, fill=True, color=c, label=name)
                              for name, c, _ in self.COLORS])
            ax.set_xlim(-0.5, T - 0.5)
            ax.set_ylim(0, 2)
            ax.set_title(f"stream {s}", fontsize=8)
            ax.tick_params(labelsize=6)
        self.fig.axes[1].legend(fontsize=6, loc="upper right", ncols=3, frameon=False)
        self.title = self.fig.suptitle("", fontsize=9)
        self._key = (streams, T)

    def draw(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
             title: str = "") -> np.ndarray:
        streams, T = x.shape
        if self._key != (streams, T):
            self._build(streams, T)
        for s, bars in enumerate(self.bars):
            for bar, values, (_, _, height) in zip(bars, (x[s], y[s], pred[s]), self.COLORS, strict=True):
                bar.set_data(values.astype(float) * height)
        self.loss_line.set_data(steps, losses)
        if len(steps):
            self.loss_ax.relim()
            self.loss_ax.autoscale_view()
        self.title.set_text(title)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def draw_echo_figure(x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                     width: int, height: int, title: str = "") -> np.ndarray:
    """One figure (see EchoFigureDrawer) as an RGB uint8 array [height, width, 3]."""
    return EchoFigureDrawer(width, height).draw(x, y, pred, steps, losses, title)


class EchoFigure(Callback):
    """Every `every_n_steps` chunks, the tutorial's figure of the current chunk into TensorBoard (Images tab).

    The chunk is the last one of the training batch that crosses a multiple of `every_n_steps` (the model
    returns its inputs, targets and predictions). Only then are they copied to the host, at most `streams`
    of them; drawing and encoding happen in a background thread (`background=False`: inline). Rank 0 only;
    does nothing without a TensorBoard logger.
    """

    def __init__(self, every_n_steps: int = 100, streams: int = 5, width: int = 900, height: int = 500,
                 background: bool = True, tag: str = "echo/chunk"):
        self.every_n_steps = every_n_steps
        self.streams = streams
        self.width, self.height = width, height
        self.background = background
        self.tag = tag
        self._last_step = 0
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []  # on the device, until a figure needs them
        self._host_losses: list[float] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._warned = False
        self._drawer: EchoFigureDrawer | None = None  # used by one thread at a time

    def _writer(self, trainer: pl.Trainer) -> Any:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        if not self._warned:
            log.warning("EchoFigure: no TensorBoard logger, so no figures")
            self._warned = True
        return None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # after a resume: the next figure is N steps on

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        n = self.every_n_steps
        if not n or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        step = trainer.global_step
        if "loss" in outputs:
            self._steps.append(step)
            self._losses.append(outputs["loss"].detach())
        if step // n <= self._last_step // n:
            return
        self._last_step = step
        writer = self._writer(trainer)
        if writer is None:
            return
        # The only host copies: this chunk (a few streams) and the losses since the last figure.
        x, y, pred = (outputs[k][: self.streams].detach().cpu().numpy() for k in ("x", "y", "pred"))
        if self._losses:
            self._host_losses += torch.stack(self._losses).float().cpu().tolist()
            self._losses = []
        args = (writer, x, y, pred, np.array(self._steps), np.array(self._host_losses), step,
                f"step {step}, epoch {trainer.current_epoch}")
        if self.background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-figure")
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._pool.submit(self._render, *args))
        else:
            self._render(*args)

    def _render(self, writer: Any, x, y, pred, steps, losses, step: int, title: str) -> None:
        try:
            if self._drawer is None:
                self._drawer = EchoFigureDrawer(self.width, self.height)
            image = self._drawer.draw(x, y, pred, steps, losses, title)
            writer.add_image(self.tag, image, global_step=step, dataformats="HWC")
        except Exception:  # a figure must never kill training
            log.exception("EchoFigure: drawing the figure failed")

    def wait(self) -> None:
        """Block until every figure submitted so far is written."""
        for future in self._pending:
            future.result()
        self._pending = []

    def _shutdown(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shutdown()  # before the logger is finalized

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException,
                     ) -> None:
        self._shutdown()


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
