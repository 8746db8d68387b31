"""Checks that run before Hydra creates a run directory (a Hydra callback), so a refused run leaves nothing.

`on_run_start` runs after the config is composed and before Hydra makes the run dir: the place to refuse
bad values, an output dir that cannot be written, and a resume that has nothing to resume. Each refusal
is one line on stderr and exit code 2, no traceback. (In a multirun each job validates its own values
in train.py instead, so one bad sweep point fails only its job.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from echo_lstm.checkpointing import check_resume, split_override
from echo_lstm.config import ConfigError, validate


def refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_missing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(key: str, path: Path) -> None:
    existing = first_missing_parent(path.absolute())
    if not existing.is_dir():
        raise ConfigError(key, str(path), f"cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, str(path), f"cannot be written: no write permission in {existing}")


def original_overrides(run_dir: Path) -> list[str] | None:
    saved = run_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(saved)) if saved.is_file() else None


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return  # a DDP rank re-running the job: rank 0 has checked everything
        try:
            validate(config)
            run_dir = Path(config.hydra.run.dir)
            if config.resume is not None:
                task = list(config.hydra.overrides.task)
                check_resume(config.resume, run_dir, original_overrides(run_dir), task)
            else:
                check_writable("hydra.run.dir", run_dir)
        except ConfigError as error:
            refuse(str(error))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable("hydra.sweep.dir", Path(config.hydra.sweep.dir))
        except ConfigError as error:
            refuse(str(error))
        # Name each job's dir (= its TensorBoard run) by what differs between jobs: the swept keys.
        # Jobs may run in other processes (joblib, submitit), which inherit the environment.
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
        swept += list(OmegaConf.select(config, "hydra.sweeper.params") or {})  # e.g. Optuna's search space
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept)


SWEPT_KEYS_ENV = "ECHO_LSTM_SWEPT_KEYS"


def sweep_job_name(num: int, overrides: Any) -> str:
    """Hydra resolver for `hydra.sweep.subdir`: `<job number>_<the job's values of the swept keys>`.

    E.g. `2_layers=3` for `-m layers=1,2,3 data.batch_size=4`: the constant overrides are the same for
    every job, so they stay out of the name (they are in the sweep summary). Without the list of swept keys
    (a job started elsewhere), all overrides are named, shortened to fit a file name.
    """
    import hashlib

    swept = os.environ.get(SWEPT_KEYS_ENV)
    items = [str(o) for o in overrides]
    if swept is not None:
        keys = set(swept.split(",")) - {""}
        items = [o for o in items if split_override(o)[0] in keys]
    name = f"{num}_{','.join(items)}" if items else str(num)
    if len(name) > 120:
        name = f"{name[:110]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name.replace("/", "_")
