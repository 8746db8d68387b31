"""Every use of a library's private or internal names, in one place, each with why no public route serves.

Lightning is pinned to the range `tests/test_compat.py` checks; that test fails loudly, naming the function
here, when a Lightning release changes what these functions rely on. Everything else in the package uses
public APIs only.
"""

from __future__ import annotations

from typing import Any


def validation_follows(trainer: Any) -> bool:
    """Whether Lightning validates right after the training batch that just ended, by its own rule.

    Why: `last.ckpt` must not be written between a batch and its validation (Lightning resumes such a
    checkpoint *without* that validation, so a kill in between would lose it for good), so the checkpoint
    callback must know at the end of a batch whether a validation follows. Lightning decides it in
    `_TrainingEpochLoop._should_check_val_fx` (val_check_interval, check_val_every_n_epoch, the last batch,
    early stopping, min_steps ...); no public API asks it, and a copy of that logic would drift.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    return not epoch_loop._skip_next_val and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def step_counter(trainer: Any) -> Any:
    """The progress object whose `increment_ready()` / `increment_completed()` advance `trainer.global_step` in
    manual optimization.

    Why: in one full-precision process the model steps each chunk's optimizer directly (torch's
    `optimizer.step()`), skipping Lightning's per-step precision/strategy/hook machinery, which costs ~8% of a
    chunk of this tiny model (docs/performance.md). `global_step` must still count chunks, as
    `LightningOptimizer.step` would make it; Lightning has no public way to advance it.
    """
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
