"""`train/steps_to_echo`: how many optimizer steps (chunks) a run needed to learn the echo."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from echo_lstm.metrics import STEPS_TO_ECHO


class StepsToEcho(Callback):
    """`train/steps_to_echo`: the first global step (chunk count) at which the training boundary accuracy,
    averaged over the last `window` chunks, reaches `target_acc`.

    The boundary accuracy is the hard part of the echo (its targets lie in the previous chunk). The model returns
    it once per training batch, as the mean over its chunks: the window is made of whole batches, each weighted
    by its chunks, and counts once it is full. Early stopping races this test (validation usually confirms the
    echo before the accuracy of predictions made *while* learning does): if training stops because early
    stopping's monitor reached its `stopping_threshold` first, that step is taken (`via` says which). Without
    either, the value is `inf` in `trainer.callback_metrics` (the worst, for a sweeper) and nothing is logged.

    The value is logged once, at the step it names; for TensorBoard (where one point draws no line) also at step
    0, and as a Text card that says how it was reached. Checkpoints keep the progress: a resumed run neither
    forgets a step already reached nor restarts its window.
    """

    def __init__(self, target_acc: float = 0.999, window: int = 32, monitor: str = "train/boundary_acc",
                 name: str = STEPS_TO_ECHO):
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
        return f"{type(self).__qualname__}{({'monitor': self.monitor, 'name': self.name})!r}"  # unique per setting

    def window_acc(self) -> float | None:
        """Mean accuracy over the window, or None while it is not full yet."""
        total = sum(c for c, _ in self._recent)
        return sum(c * a for c, a in self._recent) / total if total >= self.window else None

    def update(self, step: int, acc: float) -> bool:
        """Record a batch that ended at global step `step`; True when the target is first reached."""
        chunks, self._seen_step = step - self._seen_step, step
        if chunks <= 0 or self.reached_at is not None or math.isnan(acc):
            return False
        self._recent.append((chunks, acc))
        while sum(c for c, _ in self._recent) - self._recent[0][0] >= self.window:  # just enough batches
            self._recent.popleft()
        mean = self.window_acc()
        if mean is None or mean < self.target_acc:
            return False
        self.reached_at, self.via = step, "train window"
        return True

    def _write(self, trainer: pl.Trainer) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in trainer.loggers:  # rank 0 only (loggers are)
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({self.name: float(self.reached_at)}, step=0)  # a line from 0, not one dot
                logger.experiment.add_text(self.name, self.story(), self.reached_at)
            logger.log_metrics({self.name: float(self.reached_at)}, step=self.reached_at)

    def story(self) -> str:
        """How the step was reached, for TensorBoard's Text tab."""
        how = (f"the training boundary accuracy, averaged over the last {self.window} chunks, reached target_acc "
               f"{self.target_acc}" if self.via == "train window" else
               f"validation reached target_acc {self.target_acc} and early stopping ended the run, before the "
               f"training window (last {self.window} chunks) confirmed it")
        return f"**{self.reached_at}** steps (chunks) to learn the echo: {how}."

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
        elif self.update(trainer.global_step, float(value)):
            self._write(trainer)

    def _stopped_early(self, trainer: pl.Trainer) -> None:
        if self.reached_at is None and stopped_on_threshold(trainer):
            self.reached_at, self.via = trainer.global_step, "early stopping"
            self._write(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after EarlyStopping decided (it comes earlier in the callback list), and before the checkpoint of
        # this validation is written (Lightning runs checkpoint callbacks last): so the checkpoint holds the step.
        if not trainer.sanity_checking:
            self._stopped_early(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stopped_early(trainer)  # in case EarlyStopping came after us
        # The value at the end of fit, whichever epoch (or session, before a resume) reached it.
        trainer.callback_metrics[self.name] = torch.tensor(math.inf if self.reached_at is None else self.reached_at,
                                                           dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"reached_at": self.reached_at, "via": self.via, "recent": list(self._recent),
                "seen_step": self._seen_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached_at = state_dict.get("reached_at")
        self.via = state_dict.get("via")
        self._recent = deque(tuple(r) for r in state_dict.get("recent", []))
        self._seen_step = int(state_dict.get("seen_step", 0))


def stopped_on_threshold(trainer: pl.Trainer) -> bool:
    """Whether training stops with an EarlyStopping callback's monitor at its `stopping_threshold`."""
    for es in trainer.early_stopping_callbacks:
        value = trainer.callback_metrics.get(es.monitor)
        if es.stopping_threshold is None or value is None or not trainer.should_stop:
            continue
        if (value >= es.stopping_threshold) if es.mode == "max" else (value <= es.stopping_threshold):
            return True
    return False
