"""Sweep job dirs (= TensorBoard run names) that say what differs: `<job number>_<swept values>`, e.g. `2_layers=3`.
The preflight records the keys the sweep varies at its start, in the environment: jobs in other processes (joblib,
submitit) inherit it."""

from __future__ import annotations

import hashlib
import os
from typing import Any

SWEPT_KEYS_ENV = "ECHO_LSTM_SWEPT_KEYS"


def split_override(override: str) -> tuple[str, str]:
    """`+key=value` / `~key=value` / `key=value` -> (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(task_overrides: list[str], sweeper_params: Any = None) -> list[str]:
    """The keys a multirun varies: sweep overrides (`layers=1,2`) and the sweeper's search space (Optuna)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()] + list(sweeper_params or {})


def record_swept_keys(keys: list[str]) -> None:
    os.environ[SWEPT_KEYS_ENV] = ",".join(keys)


def job_values(overrides: list[str]) -> list[str]:
    """A job's overrides of the keys its sweep varies (all of them when the sweep's keys are unknown)."""
    swept = os.environ.get(SWEPT_KEYS_ENV)
    if swept is None:
        return overrides
    return [o for o in overrides if split_override(o)[0] in swept.split(",")]


def sweep_job_name(num: int, overrides: Any) -> str:
    """Hydra resolver for `hydra.sweep.subdir`: `<job number>_<the job's values of the swept keys>`, shortened to
    fit a file name. (The constant overrides are the same for every job: they are in the sweep summary.)"""
    items = job_values([str(o) for o in overrides])
    name = f"{num}_{','.join(items)}" if items else str(num)
    if len(name) > 120:
        name = f"{name[:110]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name.replace("/", "_")
