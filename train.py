"""Train the echo LSTM: `python train.py [overrides]`, e.g. `python train.py layers=5`.

Only Hydra and the config schema are imported up front: `--help`, `--cfg` and config errors answer fast.
Every failure a user can cause ends with one `error:` line and a non-zero exit code:
2 bad config or checkpoint, 3 training diverged (NaN), 4 could not write, 130/143 stopped by Ctrl-C/SIGTERM.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from echo_lstm.config import ConfigError, register_configs, validate

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        for warning in validate(cfg):
            print(f"warning: {warning}", file=sys.stderr)
        if cfg.resume is not None:
            cfg = resumed_config()
        from echo_lstm.distributed import use_job_relaunch
        from echo_lstm.training import train

        use_job_relaunch(Path(__file__).resolve())
        return train(cfg)
    except ConfigError as error:
        if cfg.resume is None:
            remove_unused_run_dir(Path(cfg.run_dir))
        if is_multirun():
            raise  # the launcher records this job as failed; the other jobs of the sweep go on
        fail(str(error), 2)
    except Exception as error:
        handled = describe_failure(error)
        if handled is None or is_multirun():
            raise
        fail(*handled)


def describe_failure(error: Exception) -> tuple[str, int] | None:
    """The one-line message and exit code for failures that are not bugs, else None."""
    from echo_lstm.checkpointing import CheckpointWriteError, is_disk_error
    from echo_lstm.model import NonFiniteLossError
    from echo_lstm.training import Interrupted

    if isinstance(error, NonFiniteLossError):
        return f"{error}: training diverged and was stopped; the last good checkpoint is kept", 3
    if isinstance(error, CheckpointWriteError):
        return str(error), 4
    if is_disk_error(error):
        return f"could not write {getattr(error, 'filename', '') or 'output'}: {os.strerror(error.errno)}", 4
    if isinstance(error, Interrupted):
        return str(error), error.exit_code
    return None


def resumed_config() -> DictConfig:
    """The resumed run's config: its original overrides, updated by the (resumable) new ones."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from echo_lstm.checkpointing import merged_overrides
    from echo_lstm.preflight import original_overrides

    hc = HydraConfig.get()
    original = original_overrides(Path(hc.runtime.output_dir)) or []
    return compose(config_name="train", overrides=merged_overrides(original, list(hc.overrides.task)))


def fail(message: str, code: int) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP ranks > 0 fail alike; rank 0 speaks for them
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def remove_unused_run_dir(run_dir: Path) -> None:
    """Leave nothing behind that could pass for a run: Hydra made the dir before we could refuse."""
    import shutil

    if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP rank started by Lightning: rank 0 decides
        return
    if run_dir.is_dir() and not (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
