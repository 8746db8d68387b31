"""Every use of a library's private or internal names, in one place, each with why no public route serves.

`tests/test_compat.py` fails loudly, naming the function here, when a Lightning release changes what these rely on;
the two hydra-submitit-launcher ones are exercised by `tests/test_slurm.py` on a real cluster.
"""

from __future__ import annotations

import copy
from typing import Any


def validation_follows(trainer: Any) -> bool:
    """Whether Lightning validates right after the training batch that just ended, by its own rule.

    Why: `last.ckpt` must not be written between a batch and its validation (Lightning resumes such a checkpoint
    *without* that validation, so a kill in between would lose it for good). Lightning decides it in
    `_TrainingEpochLoop._should_check_val_fx`; no public API asks it, and a copy of that logic would drift.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    return not epoch_loop._skip_next_val and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def step_counter(trainer: Any) -> Any:
    """The progress object whose `increment_ready()` / `increment_completed()` advance `trainer.global_step`.

    Why: in one full-precision process the model steps each chunk's optimizer directly, skipping Lightning's
    per-step machinery (~8% of a chunk of this tiny model: docs/performance.md); `global_step` must still count
    chunks, and Lightning has no public way to advance it.
    """
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress


def submitit_job_config(launcher: Any, overrides: list[str]) -> Any:
    """One job's composed config (its `hydra.launcher` resolved against its own `device.*`), in the sweep's process.

    Why: a SLURM job's shape must come from its own config, but the submitit launcher resolves its parameters once
    per sweep and composes a job's config only inside that job, on the cluster, with this loader.
    """
    return launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))


def submitit_with_params(launcher: Any, params: dict[str, Any]) -> Any:
    """A copy of the submitit launcher that submits with these SLURM parameters: it holds one set for all its jobs,
    and a sweep over `device.*` needs one per job shape."""
    other = copy.copy(launcher)
    other.params = {**launcher.params, **params}
    return other


def mark_epoch_in_progress(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint's fit-loop epoch counters say the epoch is in progress, as it is when this app saves one.

    Why: a run restored from a checkpoint of an epoch's *last* batch starts the next epoch without counting it
    (ready = started = completed): a checkpoint saved inside that epoch then restores as the epoch not yet begun,
    and its first blocks are trained again (measured: 28 steps repeated). No public API sets these counters.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not progress:
        return
    for counts in (progress["total"], progress["current"]):
        counts["ready"] = counts["started"] = max(counts["started"], counts["completed"] + 1)
        counts["processed"] = counts["completed"]
