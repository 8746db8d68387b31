"""Train the echo LSTM: `python train.py [overrides]`, e.g. `python train.py layers=5`.

Only Hydra and the config schema are imported up front: `--help`, `--cfg` and config errors answer fast.
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
        from echo_lstm.distributed import use_job_relaunch
        from echo_lstm.training import train

        use_job_relaunch(Path(__file__).resolve())
        return train(cfg)
    except ConfigError as error:
        remove_unused_run_dir(Path(cfg.run_dir))
        if is_multirun():
            raise  # the launcher records this job as failed; the other jobs of the sweep go on
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


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
