"""Every use of a library's private or internal names, in one place, each with why no public route serves.

Lightning is pinned to the range `tests/test_compat.py` checks; that test fails loudly, naming the function
here, when a Lightning release changes what these functions rely on. The two hydra-submitit-launcher attributes
(`submitit_job_config`, `submitit_with_params`) are exercised by `tests/test_slurm.py` on a real cluster.
Everything else in the package uses public APIs only.
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


def submitit_job_config(launcher: Any, overrides: list[str]) -> Any:
    """One job's composed config (its `hydra.launcher` resolved against its own `device.*`), in the sweep's process.

    Why: the SLURM job's shape (tasks, GPUs, nodes) must come from each job's own config, but the submitit
    launcher resolves its parameters once per sweep and composes a job's config only inside that job, on the
    cluster. It composes it with its `hydra_context.config_loader` and the sweep's `config`, as here.
    """
    return launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))


def submitit_with_params(launcher: Any, params: dict[str, Any]) -> Any:
    """A copy of the submitit launcher that submits with these SLURM parameters (its `params`).

    Why: the plugin holds one set of parameters for all the jobs it launches; a sweep over `device.*` needs one
    set per job shape, and the plugin has no other way to take them.
    """
    import copy

    other = copy.copy(launcher)
    other.params = {**launcher.params, **params}
    return other


def mark_epoch_in_progress(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint's fit-loop epoch counters say what is true when it is saved: the epoch is in progress.

    Why: every checkpoint of this app is saved inside an epoch (at the end of a training batch or of a
    validation), where Lightning's counters read ready = started = completed + 1. A run restored from a
    checkpoint of an epoch's *last* batch finishes that epoch but starts the next one without counting it
    (ready = started = completed): a checkpoint it then saves inside that next epoch restores as the epoch not
    yet begun, the loader's position is dropped and the epoch's first blocks are trained again (measured: a stop
    at an epoch's last batch, one later in the next epoch, continued: 28 steps repeated). Lightning keeps these
    counters in `loops.fit_loop.epoch_progress` of the checkpoint; no public API sets them.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not progress:
        return
    for counts in (progress["total"], progress["current"]):
        counts["ready"] = counts["started"] = max(counts["started"], counts["completed"] + 1)
        counts["processed"] = counts["completed"]
