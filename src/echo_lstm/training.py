"""One training run from a validated config: build data, model, logger, callbacks, Trainer; fit; report.

Imported only once the config has passed `config.validate`, so `--help` and config errors never pay for
torch and Lightning.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_lstm.config import ConfigError


def quiet_libraries() -> None:
    """Silence start-up tips and dependency deprecation chatter that say nothing about this run."""
    import pytorch_lightning  # noqa: F401  (creates its loggers, which we then quiet)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resuming into its own dir


def keep_freed_memory() -> bool:
    """glibc only: serve allocations from the heap and keep freed memory (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    By default glibc maps every block above a threshold with mmap and unmaps it when freed, so each large
    tensor of each chunk costs fresh page faults: at 256 streams x state 64 that was a third of the time
    (benchmarks/throughput.py). A training process reuses the same sizes every step, so keeping the
    memory is the right trade. Returns whether it took effect.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return False


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat `a.b.c -> scalar` pairs for TensorBoard's HParams tab."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}." if not prefix else f"{prefix}{k}.")
        else:
            key = prefix[:-1]
            out[key] = node if isinstance(node, (bool, int, float, str)) else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for k in ("logger", "callbacks", "run_dir"):
        container.pop(k, None)
    walk(container, "")
    return out


def log_hparams(logger: Any, cfg: DictConfig, metrics: list[str]) -> None:
    """Fill the HParams tab: every config value, and which scalar tags are the run's metrics.

    Written with TensorBoard's summary directly rather than `logger.log_hyperparams(params, metrics)`,
    which would also write placeholder metric values at step 0 into the real curves.
    """
    from torch.utils.tensorboard.summary import hparams

    experiment, session_start, session_end = hparams(flat_hparams(cfg), {m: float("nan") for m in metrics})
    writer = logger.experiment.get_writer() if hasattr(logger.experiment, "get_writer") else logger.experiment
    for summary in (experiment, session_start, session_end):
        writer.file_writer.add_summary(summary)


class Interrupted(RuntimeError):
    """Training was stopped by a signal after saving a checkpoint; the run can be resumed."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        import signal

        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved. Continue with: "
                         f"python train.py resume={os.path.relpath(run_dir)}")


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, int, bool]:
    """The checkpoint to start from, checked: (path, its step, whether this run continues in place).

    `resume=<run dir>` continues that run from its `last.ckpt`; a SLURM requeue continues from the
    `hpc_ckpt_<n>.ckpt` that Lightning saved in the run dir on the preemption signal (what Lightning would
    pick itself; chosen here so that TensorBoard is told to drop what came after it); `ckpt_path=<file>`
    starts a new run from that checkpoint.
    """
    from echo_lstm.checkpointing import LAST, check_compatible, read_checkpoint

    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    if cfg.resume is not None:
        key, path, in_place = "resume", run_dir / LAST, True
    elif hpc:
        key, path, in_place = "hpc_ckpt", hpc[-1], True
    elif cfg.ckpt_path is not None:
        key, path, in_place = "ckpt_path", Path(cfg.ckpt_path), False
    else:
        return None, 0, False
    ckpt = read_checkpoint(path, key)
    check_compatible(ckpt, cfg, key, path)
    return path, int(ckpt.get("global_step", 0)), in_place


def train(cfg: DictConfig) -> float | None:
    quiet_libraries()
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate

    from echo_lstm.callbacks import StopRequested
    from echo_lstm.checkpointing import checkpoint_io
    from echo_lstm.data import EchoDataModule
    from echo_lstm.distributed import job_scope, trainer_device_args
    from echo_lstm.model import EchoLSTM
    from echo_lstm.research import job_threads

    started = time.perf_counter()
    keep_freed_memory()
    threads = job_threads(cfg.threads)  # capped per job in a parallel (joblib) sweep
    if threads > 0:
        torch.set_num_threads(threads)
    pl.seed_everything(cfg.seed, verbose=False)
    run_dir = Path(cfg.run_dir)
    start_from, start_step, in_place = resume_checkpoint(cfg, run_dir)

    datamodule = EchoDataModule(**OmegaConf.to_container(cfg.data, resolve=True))
    model = EchoLSTM(
        **OmegaConf.to_container(cfg.model, resolve=True),
        echo_step=cfg.data.echo_step,
        truncated_backprop_length=cfg.data.truncated_backprop_length,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
    )
    # Resuming appends to the same TensorBoard run; purge_step tells TensorBoard to drop what the
    # interrupted run logged after its last checkpoint, so no step appears twice.
    logger = instantiate(cfg.logger, **({"purge_step": start_step + 1} if in_place else {}))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar callback when bars are off
        from pytorch_lightning.callbacks import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    device = trainer_device_args(OmegaConf.to_container(cfg.device, resolve=True))
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    # A series shorter than val_check_interval batches: validate once per epoch (validate() warned).
    trainer_args["val_check_interval"] = min(trainer_args["val_check_interval"], len(datamodule.train_dataloader()))
    trainer = pl.Trainer(
        **device,
        **trainer_args,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # streams are sharded by the data module, never by a sampler
        plugins=[checkpoint_io()],  # atomic checkpoint writes
    )
    if trainer.is_global_zero and not in_place:  # a resumed run has them already
        log_hparams(logger, cfg, ["val/acc", "val/boundary_acc", "train/steps_to_echo"])
    try:
        with job_scope():
            trainer.fit(model, datamodule=datamodule, ckpt_path=start_from and str(start_from), weights_only=True)
    except StopRequested as stop:
        raise Interrupted(stop.signum, trainer.global_step, run_dir) from None

    metrics = {k: float(v) for k, v in {**model.last_train_metrics, **trainer.callback_metrics}.items()
               if v.numel() == 1}
    if start_from is not None and trainer.global_step == start_step and cfg.optimized_metric not in metrics:
        if trainer.is_global_zero:
            print(f"echo-lstm: {os.path.relpath(start_from)} is already complete (step {start_step}): nothing to train")
        return None
    if trainer.is_global_zero:
        print_summary(trainer, cfg, metrics, time.perf_counter() - started, run_dir)
    if cfg.optimized_metric not in metrics:
        raise ConfigError("optimized_metric", cfg.optimized_metric,
                          f"was not logged; logged metrics are {', '.join(sorted(metrics))}")
    return metrics[cfg.optimized_metric]


def print_summary(trainer: Any, cfg: DictConfig, metrics: dict[str, float], seconds: float, run_dir: Path) -> None:
    reached = min(metrics.get("val/acc", 0.0), metrics.get("val/boundary_acc", 0.0)) >= cfg.target_acc
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt else ""
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val/loss", "val/acc", "val/boundary_acc") if k in metrics)
    epoch = max(trainer.current_epoch, 1)  # Lightning counts a stopped epoch as done
    lines = [
        "",
        f"echo-lstm: {'learned the echo' if reached else 'did not reach'} (target_acc {cfg.target_acc}) "
        f"at step {trainer.global_step}, in epoch {epoch} of {trainer.max_epochs}, after {seconds:.1f} s",
        f"  final: {shown}",
        f"  run dir: {os.path.relpath(run_dir)}",
    ]
    if best:
        lines.append(f"  best checkpoint: {os.path.relpath(best)}")
    lines.append(f"  view: tensorboard --logdir {os.path.relpath(run_dir)}")
    print("\n".join(lines), flush=True)
