"""How many torch threads and whether a progress bar: a job of a parallel (joblib) sweep shares the machine."""

from __future__ import annotations

import logging

from echo_lstm.machinery.config import available_cores

log = logging.getLogger(__name__)


def parallel_jobs() -> int:
    """How many jobs of this sweep run at the same time on this machine (1 outside a joblib sweep)."""
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    if launcher is None or "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)  # joblib: -1 = all cores, -2 = all but 1


def job_threads(requested: int) -> int:
    """Torch intra-op threads for this job: `requested` (0 = torch's default), capped in a parallel sweep at
    cores // parallel jobs (at least 1), so that the jobs do not oversubscribe the cores."""
    parallel = parallel_jobs()
    if parallel == 1:
        return requested
    cores = available_cores()
    share = max(1, cores // parallel)
    threads = share if requested <= 0 else min(requested, share)
    log.info(f"torch threads: {threads} (joblib sweep: {cores} cores / {parallel} parallel jobs)")
    return threads
