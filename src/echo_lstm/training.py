"""One training run from a validated config: data, model, loggers, callbacks, Trainer; fit; the end summary.

Imported only once the config has passed `config.validate`, so `--help` and config errors never pay for torch
and Lightning.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_lstm import metrics as registry
from echo_lstm.errors import (
    ConfigError,
    Diverged,
    Finished,
    ProcessDied,
    Raw,
    Stopped,
    command,
    disk_error,
    hydra_quote,
    relpath,
    signal_name,
)
from echo_lstm.rundir import SLURM_JOB

log = logging.getLogger("echo_lstm.run")


def quiet_libraries() -> None:
    """Silence start-up tips and dependency chatter that say nothing about this run."""
    import pytorch_lightning  # noqa: F401  (creates its loggers, which we then quiet)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resuming into its own dir
    warnings.filterwarnings("ignore", message=".*dirpath has changed from.*")  # ckpt_path=: best-k starts afresh


def keep_freed_memory() -> bool:
    """glibc only: serve allocations from the heap and keep freed memory (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    By default glibc maps every block above a threshold with mmap and unmaps it when freed, so each large tensor
    of each chunk costs fresh page faults: at 256 streams x state 64 that was a third of the time
    (benchmarks/throughput.py). A training process reuses the same sizes every step, so keeping the memory is the
    right trade. Returns whether it took effect.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return False


@dataclass
class RunResult:
    """What a finished run computed (train.py returns it to sweepers; the summary prints it)."""

    metrics: dict[str, float]
    step: int  # the last optimizer step
    epoch: int  # the epoch of the last training batch, counted from 0 (as the progress bar)
    reached: int | None  # the step at which the echo was learned (train/steps_to_echo), None if never
    reached_via: str | None  # "train window" (the training loop's boundary accuracy) | "early stopping" (validation)
    stop_reason: str
    seconds: float
    run_dir: Path
    best: str = ""
    notes: list[str] = field(default_factory=list)

    def value(self, name: str) -> float:
        return self.metrics.get(name, math.nan)

    def write(self) -> None:
        """`<run dir>/result.json`: what the run computed, for scripts (e.g. benchmarks/throughput.py)."""
        import json

        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data["metrics"] = {k: (v if math.isfinite(v) else str(v)) for k, v in self.metrics.items()}
        from echo_lstm.rundir import write_file

        write_file(self.run_dir / "result.json", json.dumps(data, indent=1) + "\n")  # atomic, never through a link


@dataclass
class Start:
    """Where a run starts: a checkpoint (its path, step and epoch), and whether it continues in place."""

    path: Path | None = None
    step: int = 0
    epoch: int = 0
    in_place: bool = False


def starting_point(cfg: DictConfig, run_dir: Path) -> Start:
    """The checkpoint to start from, checked against the config.

    `resume=<run dir>` continues that run from its `last.ckpt`; a requeued SLURM job continues from the
    `last.ckpt` in its own run dir (only the job that marked the dir does: another job's is refused, as is a
    requeued job whose checkpoint is missing); `ckpt_path=<file>` starts a new run from that checkpoint.
    """
    from echo_lstm.resume import LAST, check_checkpoint, read_checkpoint

    if cfg.resume is not None:
        key, path, in_place = "resume", run_dir / LAST, True
    elif (run_dir / SLURM_JOB).is_file() or (run_dir / LAST).is_file():
        job = os.environ.get("SLURM_JOB_ID")
        owner = (run_dir / SLURM_JOB).read_text().strip() if (run_dir / SLURM_JOB).is_file() else None
        if job is None or job != owner:
            raise ConfigError("hydra.run.dir", str(run_dir), f"holds the run of SLURM job {owner or '(unknown)'}, "
                              f"which only that job continues; this is {f'job {job}' if job else 'not a SLURM job'}")
        if not (run_dir / LAST).is_file():
            raise ConfigError("hydra.run.dir", str(run_dir), f"SLURM job {job} was requeued, but its checkpoint "
                              f"{LAST} is missing: nothing to continue from (submit it again into a new dir)")
        key, path, in_place = "hydra.run.dir", run_dir / LAST, True
    elif cfg.ckpt_path is not None:
        key, path, in_place = "ckpt_path", Path(str(cfg.ckpt_path)), False
    else:
        return Start()
    from hydra.utils import instantiate

    ckpt = read_checkpoint(path, key)
    if key == "hydra.run.dir" and ckpt.get("echo_slurm_job") != os.environ.get("SLURM_JOB_ID"):
        saver = f"SLURM job {ckpt['echo_slurm_job']}" if ckpt.get("echo_slurm_job") else "no SLURM job"
        raise ConfigError(key, str(run_dir), f"its {LAST} was saved by {saver}, not by this requeued SLURM job "
                          f"{os.environ.get('SLURM_JOB_ID')}: a foreign checkpoint, not continued")
    net_config = OmegaConf.to_container(cfg.model.net, resolve=True)
    net = instantiate(net_config)
    try:  # a throwaway optimizer over a throwaway network, to check the checkpoint's state (a bad one: built() says)
        optimizer = instantiate(OmegaConf.to_container(cfg.optimizer, resolve=True))(net.parameters())
    except Exception:
        optimizer = None
    check_checkpoint(ckpt, net, net_config, cfg.data.batch_size, key, path, optimizer)
    return Start(path, int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0)), in_place)


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """`trainer.*` as given to `pl.Trainer`, minus what the model applies itself (clipping, per chunk)."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    args.pop("_target_", None)
    return {**args, "gradient_clip_val": None, "gradient_clip_algorithm": None}


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """The data module and the model (`instantiate(cfg.data)`, `instantiate(cfg.model)`), with the optimizer built
    once, so that a setting any of them refuses is one line naming it, before the Trainer starts."""
    import torch
    from hydra.utils import instantiate

    datamodule = built("data", cfg.data, lambda: instantiate(cfg.data))
    model = built("model", cfg.model, lambda: instantiate(cfg.model))
    optimizer = built("optimizer", cfg.optimizer, model.configure_optimizers)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError("optimizer._target_", cfg.optimizer._target_, "must name a torch.optim.Optimizer class")
    return datamodule, model


def train(cfg: DictConfig, callbacks: list[Any] | None = None) -> RunResult:
    """Train from a validated config (train.py calls it); `callbacks` are added to the configured ones (e.g. a
    probe). Writes `<run dir>/result.json` (RunResult) at the end, on rank 0. A full disk or a denied write anywhere
    is a WriteFailed naming the file (or the run dir's event file, when the writer does not say)."""
    try:
        return _train(cfg, callbacks)
    except OSError as error:
        written = disk_error(error, f"{cfg.run_dir}/events.out.tfevents.* (TensorBoard)")
        if written is None:
            raise
        raise written from None


def _train(cfg: DictConfig, callbacks: list[Any] | None) -> RunResult:
    from echo_lstm import distributed

    # What can be refused with torch alone, before Lightning is imported (seconds): the checkpoint, the devices.
    run_dir = Path(cfg.run_dir)
    start = starting_point(cfg, run_dir)
    device = distributed.trainer_device_args(OmegaConf.to_container(cfg.device, resolve=True))
    quiet_libraries()
    import pytorch_lightning as pl
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from echo_lstm.callbacks.checkpoint import AtomicCheckpointIO
    from echo_lstm.callbacks.graceful_stop import StopRequested
    from echo_lstm.loggers import build_loggers, log_hparams
    from echo_lstm.sweeps.threads import job_threads, parallel_jobs

    started = time.perf_counter()
    keep_freed_memory()
    threads = job_threads(cfg.threads)  # capped per job in a parallel (joblib) sweep
    if threads > 0:
        torch.set_num_threads(threads)
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, model = build(cfg)
    # Resuming appends to the same TensorBoard run; purge_step tells TensorBoard to drop what the interrupted run
    # logged after its last checkpoint, so no step appears twice.
    loggers = build_loggers(cfg, **({"purge_step": start.step + 1} if start.in_place else {}))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None] + list(callbacks or [])
    args = trainer_arguments(cfg)
    if parallel_jobs() > 1:  # progress bars of parallel jobs would interleave: each job prints one line at its end
        args["enable_progress_bar"] = False
    callbacks = drop_disabled(callbacks, args)
    if args.get("enable_checkpointing") is None and not any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks):
        args["enable_checkpointing"] = False  # no checkpoint callback configured: none of Lightning's either
    if isinstance(args.get("val_check_interval"), int):  # fewer batches than that: once per epoch (warned)
        args["val_check_interval"] = min(args["val_check_interval"], batches_per_epoch(args, datamodule))
    for key, n in (("limit_train_batches", len(datamodule.train_dataloader())), ("limit_val_batches", 1)):
        if isinstance(args.get(key), float) and 0 < args[key] < 1:  # a share of an epoch: at least one batch
            args[key] = max(1, int(n * args[key]))
    plugins: list[Any] = [AtomicCheckpointIO(run_dir / "checkpoints")]  # see callbacks/checkpoint.py
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        # Lightning's own SLURM requeue saves `hpc_ckpt_<n>.ckpt` inside a block of chunks, which cannot be
        # continued exactly: off. The stop at a block boundary and the requeue are callbacks/graceful_stop.py's.
        try:
            plugins.append(SLURMEnvironment(auto_requeue=False))
        except RuntimeError as error:  # Lightning refuses srun's layout (e.g. --ntasks instead of --ntasks-per-node)
            raise ConfigError("srun", Raw(f"--ntasks={os.environ.get('SLURM_NTASKS')}"),
                              f"Lightning refuses it: {str(error).strip().splitlines()[0]}") from None
    try:
        trainer = instantiate(cfg.trainer, **device, **args, logger=loggers or False, callbacks=callbacks,
                              default_root_dir=str(run_dir), use_distributed_sampler=False, plugins=plugins,
                              _convert_="all")
    except (MisconfigurationException, ValueError, TypeError, InstantiationException) as error:
        raise trainer_refusal(error.__cause__ or error if isinstance(error, InstantiationException) else error,
                              cfg) from None
    if os.environ.get("SLURM_JOB_ID") and trainer.is_global_zero:
        from echo_lstm.rundir import write_file

        write_file(run_dir / SLURM_JOB, os.environ["SLURM_JOB_ID"] + "\n")
    if trainer.is_global_zero:
        if not start.in_place:  # a resumed run has them already
            log_hparams(trainer.loggers, cfg, registry.HPARAMS)
        if start.in_place:
            say(f"echo-lstm: continuing {relpath(run_dir)} from step {start.step} (epoch {start.epoch})")
        elif start.path is not None:
            say(f"echo-lstm: a new run from {relpath(start.path)} (step {start.step})")
    with distributed.job_scope() as ranks:
        ranks.start(trainer, run_dir, cfg.device.strategy)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=start.path and str(start.path))
        except StopRequested as stop:
            raise stopped(stop.signum, trainer, run_dir) from None
        except Diverged as error:
            raise Diverged(error.step, error.what, checkpoint_note(run_dir)) from None
        except Exception:
            if ranks.dead():
                note = f"{checkpoint_note(run_dir).capitalize()}; continue with: {resume_command(run_dir)}"
                raise ProcessDied(f"{ranks.death()}; the run stopped at about step {trainer.global_step}. {note}") \
                    from None
            raise
    if start.in_place and trainer.global_step == start.step:  # a resumed run that had ended: nothing trained
        if (run_dir / "result.json").is_file():  # its results stand; nothing of it changes
            raise Finished(f"{relpath(run_dir)} has nothing left to train at step {start.step} with these limits "
                           "(raise trainer.max_steps or trainer.max_epochs): nothing was changed")
        trainer.validate(model, datamodule=datamodule, verbose=False)  # killed before its result.json: recover it
    result = summarize(trainer, model, cfg, start, time.perf_counter() - started, run_dir)
    if start.path is not None and trainer.global_step == start.step and not result.metrics.get("val/acc"):
        result.stop_reason = "already complete"
    if trainer.is_global_zero:
        result.write()
    return result


def stopped(signum: int, trainer: Any, run_dir: Path) -> Stopped:
    """A requested stop, saved at a block boundary; a SLURM job's pre-emption warning requeues it too."""
    from echo_lstm import slurm
    from echo_lstm.resume import LAST

    step = trainer.global_step
    if signum in slurm.REQUEUE_SIGNALS and slurm.in_slurm_job():
        failed = slurm.requeue() if trainer.is_global_zero else None
        if failed is None:
            job = os.environ["SLURM_JOB_ID"]
            line = (f"requeued by {signal_name(signum)} at step {step}: SLURM job {job} continues from "
                    f"{os.path.relpath(run_dir / LAST)} (step {step}) when it starts again")
            if trainer.is_global_zero:
                log.info(line)
            return Stopped(signum, line)
        log.info(f"could not requeue SLURM job {os.environ['SLURM_JOB_ID']}: {failed}")
    note = checkpoint_note(run_dir)
    if (run_dir / LAST).is_file():  # else nothing is kept to continue from
        note += f". Continue with: {resume_command(run_dir)}"
    line = f"stopped by {signal_name(signum)} at step {step}; {note}"
    if trainer.is_global_zero:
        log.info(line)  # the run's log says where it stopped (and a continuation where it went on)
    return Stopped(signum, line)


def batches_per_epoch(args: dict[str, Any], datamodule: Any) -> int:
    """Training batches per epoch, after `limit_train_batches` / `overfit_batches` (ints: batches; floats: a share)."""
    n = len(datamodule.train_dataloader())
    for key in ("overfit_batches", "limit_train_batches"):
        limit = args.get(key)
        if limit:
            n = min(n, limit) if isinstance(limit, int) else max(1, int(n * limit))
            break  # overfit_batches overrides limit_train_batches (as in Lightning)
    return max(1, n)


def resume_command(run_dir: Path) -> str:
    """The command that continues this run, ready to paste into a shell (any path: shell- and Hydra-quoted)."""
    return command("python", "train.py", "resume=" + hydra_quote(relpath(run_dir)))


def checkpoint_note(run_dir: Path) -> str:
    """Which checkpoint a stopped run left (only what exists: none if it stopped before its first)."""
    from echo_lstm.resume import LAST

    last = run_dir / LAST
    if not last.is_file():
        return "no checkpoint was written yet"
    import torch

    try:
        step = torch.load(last, map_location="cpu", weights_only=True).get("global_step", "?")
    except Exception:
        step = "?"
    return f"the last good checkpoint ({relpath(last)}, step {step}) is kept"


def drop_disabled(callbacks: list[Any], args: dict[str, Any]) -> list[Any]:
    """Lightning refuses a progress bar when bars are off, and checkpoint callbacks when checkpointing is off."""
    from pytorch_lightning.callbacks import Checkpoint, ProgressBar

    if args.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if args.get("enable_checkpointing") is False:
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    return callbacks


def built(key: str, node: Any, make: Any) -> Any:
    """`make()`, or one line naming the config node when what it names cannot be built (a wrong `_target_`, an
    argument its class does not take, a value it refuses)."""
    from hydra.errors import InstantiationException

    try:
        return make()
    except (InstantiationException, TypeError, ValueError, ImportError, AttributeError) as error:
        import re

        targets = []
        while error.__cause__ is not None:  # Hydra wraps the error that says what is wrong (once per nested object)
            targets += re.findall(r"Error in call to target '([^']+)'", str(error))[:1]
            error = error.__cause__
        if isinstance(error, ConfigError):  # a constructor's own check (errors.check): name the whole setting
            raise ConfigError(setting(key, node, error.key), error.value, error.allowed) from None
        inner = [path for path, n in nodes(node) if path and str(n.get("_target_")).rsplit(".")[-1] ==
                 targets[-1].rsplit(".")[-1]] if len(targets) > 1 else []
        if inner:  # an object built inside another (model.net inside model): name its node
            key, node = f"{key}.{inner[0]}", OmegaConf.select(node, inner[0])
        text = " ".join(line.strip() for line in str(error).strip().splitlines()) or type(error).__name__
        text = text.split(", set env var HYDRA_FULL_ERROR")[0][:240]
        target = OmegaConf.select(node, "_target_", default="?") if OmegaConf.is_config(node) else "?"
        raise ConfigError(f"{key}._target_", Raw(target), f"cannot be built: {text}") from None


def nodes(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """`node` and every node inside it, with their paths ("", "net", ...)."""
    found = [(path, node)]
    for k, v in node.items_ex(resolve=False) if isinstance(node, DictConfig) else ():
        if isinstance(v, DictConfig):
            found += nodes(v, f"{path}.{k}".lstrip("."))
    return found


def setting(key: str, node: Any, name: str) -> str:
    """The full key of the argument `name` that a class built from `node` (at `key`) refused: where it is set in the
    node or a node inside it, or the top-level setting it reads (`model.net.layers: ${layers}` -> `layers`)."""
    raw = OmegaConf.to_container(node, resolve=False)

    def find(d: dict[str, Any], prefix: str) -> str | None:
        if name in d and not isinstance(d[name], dict):
            found = d[name]
            if isinstance(found, str) and found.startswith("${") and found.endswith("}") and ":" not in found:
                return found[2:-1]
            return prefix + name
        return next((f for k, v in d.items() if isinstance(v, dict) and (f := find(v, f"{prefix}{k}."))), None)

    return find(raw, f"{key}.") or f"{key}.{name}"


def trainer_refusal(error: BaseException, cfg: DictConfig) -> ConfigError:
    """Lightning's refusal of a Trainer argument as one line naming it (Lightning names it in backticks)."""
    import re

    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    named = [n for n in re.findall(r"`(\w+)", text) if n in cfg.trainer]
    named += [k for k, v in cfg.trainer.items() if isinstance(v, str) and f"'{v}'" in text]  # a value it quotes
    if named:
        return ConfigError(f"trainer.{named[0]}", cfg.trainer[named[0]], f"Lightning refuses it: {text}")
    return ConfigError("trainer", Raw("..."), f"Lightning refuses these settings: {text}")


def stop_reason(trainer: Any) -> str:
    from echo_lstm.callbacks.steps_to_echo import stopped_on_threshold

    if trainer.fast_dev_run:
        return "trainer.fast_dev_run"
    if stopped_on_threshold(trainer):
        return "early stopping: validation reached target_acc"
    if 0 < trainer.max_steps <= trainer.global_step:
        return f"trainer.max_steps={trainer.max_steps}"
    if trainer.max_epochs and trainer.current_epoch >= trainer.max_epochs:
        return f"trainer.max_epochs={trainer.max_epochs}"
    return "trainer.should_stop" if trainer.should_stop else "the end of its data"


def summarize(trainer: Any, model: Any, cfg: DictConfig, start: Start, seconds: float, run_dir: Path) -> RunResult:
    from echo_lstm.callbacks.steps_to_echo import StepsToEcho

    values = {**model.last_train_metrics, **trainer.callback_metrics}
    metrics = {k: float(v) for k, v in values.items() if k != "step" and getattr(v, "numel", lambda: 1)() == 1}
    steps_cb = next((c for c in trainer.callbacks if isinstance(c, StepsToEcho)), None)
    reached = steps_cb.reached_at if steps_cb is not None else None
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt else ""
    notes = []
    if not cfg.model.carry_state:
        notes.append("model.carry_state=false: the training loop reset the state at every chunk, so "
                     f"train/boundary_acc stays at chance ({metrics.get('train/boundary_acc', math.nan):.4f}); "
                     "val/* carry the state through the series")
    return RunResult(metrics=metrics, step=trainer.global_step, epoch=getattr(model, "last_epoch", start.epoch),
                     reached=reached, reached_via=steps_cb.via if steps_cb else None, stop_reason=stop_reason(trainer),
                     seconds=seconds, run_dir=run_dir, best=best, notes=notes)


def say(line: str) -> None:
    """A line for the console and the run's log."""
    print(line, flush=True)
    log.info(line)


def summary_lines(result: RunResult, cfg: DictConfig) -> list[str]:
    """The end-of-run summary: when the echo was learned, where the run stopped and why, the final metrics."""
    how = {"train window": "the training boundary accuracy", "early stopping": "validation"}.get(result.reached_via, "")
    learned = (f"learned the echo at step {result.reached} ({how} reached target_acc {cfg.target_acc})"
               if result.reached is not None else
               f"did not learn the echo (train/steps_to_echo: the training boundary accuracy never reached target_acc "
               f"{cfg.target_acc})")
    shown = ", ".join(f"{k} {result.metrics[k]:.4f}" for k in ("val/loss", "val/acc", "val/boundary_acc",
                                                                 "train/boundary_acc") if k in result.metrics)
    rel = relpath(result.run_dir)
    lines = ["", f"echo-lstm: {learned}; stopped at step {result.step} in epoch {result.epoch} "
                 f"({result.stop_reason}), after {result.seconds:.1f} s",
             f"  final: {shown}", *[f"  note: {n}" for n in result.notes], f"  run dir: {rel}"]
    if result.best:
        lines.append(f"  best checkpoint: {relpath(result.best)}")
    if any(result.run_dir.glob("events.out.tfevents.*")):  # a TensorBoard logger ran
        lines.append(f"  view: {command('tensorboard', '--logdir', rel)}")
    return lines


def summary_line(result: RunResult, cfg: DictConfig) -> str:
    """The same in one line, for a job of a parallel sweep."""
    learned = f"learned at step {result.reached}" if result.reached is not None else "not learned"
    acc = result.metrics.get(cfg.optimized_metric, math.nan)
    return (f"{learned}, stopped at step {result.step} ({result.stop_reason}), {cfg.optimized_metric} {acc:.4f}, "
            f"{result.seconds:.1f} s")
