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

from echo_lstm.checkpointing import check_resume
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
