"""The machinery around one run (training.py calls it): objects built with one-line refusals, the Trainer's extras,
requested stops, and what a run says and leaves at its end (the summary, result.json)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_lstm.machinery import slurm
from echo_lstm.machinery.errors import ConfigError, Raw, Stopped, command, hydra_quote, relpath, signal_name
from echo_lstm.machinery.resume import LAST
from echo_lstm.machinery.rundir import write_file

log = logging.getLogger("echo_lstm.run")


def quiet_libraries() -> None:
    """Silence start-up tips and dependency chatter that say nothing about this run."""
    import pytorch_lightning  # noqa: F401  (creates its loggers, which we then quiet)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # (not empty: resuming into its own dir; dirpath changed: ckpt_path= starts best-k afresh)
    for message in ("LeafSpec", "is smaller than the logging interval", "does not have many workers",
                    "exists and is not empty", "dirpath has changed from"):
        warnings.filterwarnings("ignore", message=f".*{message}.*")


def keep_freed_memory() -> bool:
    """glibc only: keep freed memory instead of unmapping each large block (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
    fresh page faults for each chunk's tensors were a third of the time at 256 streams x state 64
    (benchmarks/throughput.py), and training reuses the same sizes every step. Returns whether it took effect."""
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
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data["metrics"] = {k: (v if math.isfinite(v) else str(v)) for k, v in self.metrics.items()}
        write_file(self.run_dir / "result.json", json.dumps(data, indent=1) + "\n")  # atomic, never through a link


def stopped(signum: int, trainer: Any, run_dir: Path) -> Stopped:
    """A requested stop, saved at a block boundary; a SLURM job's pre-emption warning requeues it too."""
    step, line = trainer.global_step, None
    if signum in slurm.REQUEUE_SIGNALS and slurm.in_slurm_job():
        job = os.environ["SLURM_JOB_ID"]
        failed = slurm.requeue() if trainer.is_global_zero else None
        if failed is None:
            line = (f"requeued by {signal_name(signum)} at step {step}: SLURM job {job} continues from "
                    f"{os.path.relpath(run_dir / LAST)} (step {step}) when it starts again")
        else:
            log.info(f"could not requeue SLURM job {job}: {failed}")
    if line is None:
        note = checkpoint_note(run_dir)
        if (run_dir / LAST).is_file():  # else nothing is kept to continue from
            note += f". Continue with: {resume_command(run_dir)}"
        line = f"stopped by {signal_name(signum)} at step {step}; {note}"
    if trainer.is_global_zero:
        log.info(line)  # the run's log says where it stopped (and a continuation where it went on)
    return Stopped(signum, line)


def share(fraction: float, n: int) -> int:
    """A fraction of n batches, counted as Lightning counts it, but at least one (Lightning refuses fewer)."""
    return max(1, int(n * fraction))


def batches_per_epoch(args: dict[str, Any], n: int) -> int:
    """Of an epoch's n training batches, those left after `limit_train_batches` / `overfit_batches` (ints: batches;
    floats: a share)."""
    for key in ("overfit_batches", "limit_train_batches"):
        limit = args.get(key)
        if limit:
            n = min(n, limit) if isinstance(limit, int) else share(limit, n)
            break  # overfit_batches overrides limit_train_batches (as in Lightning)
    return max(1, n)


def resume_command(run_dir: Path) -> str:
    """The command that continues this run, ready to paste into a shell (any path: shell- and Hydra-quoted)."""
    return command("python", "train.py", "resume=" + hydra_quote(relpath(run_dir)))


def checkpoint_note(run_dir: Path) -> str:
    """Which checkpoint a stopped run left (only what exists: none if it stopped before its first)."""
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

    off = {ProgressBar: "enable_progress_bar", Checkpoint: "enable_checkpointing"}
    dropped = tuple(cls for cls, key in off.items() if args.get(key) is False)
    return [c for c in callbacks if not isinstance(c, dropped)]


def built(key: str, node: Any, make: Any) -> Any:
    """`make()`, or one line naming the config node when what it names cannot be built (a wrong `_target_`, an
    argument its class does not take, a value it refuses)."""
    from hydra.errors import InstantiationException

    try:
        return make()
    except (InstantiationException, TypeError, ValueError, ImportError, AttributeError) as error:
        targets = []
        while error.__cause__ is not None:  # Hydra wraps the error that says what is wrong (once per nested object)
            targets += re.findall(r"Error in call to target '([^']+)'", str(error))[:1]
            error = error.__cause__
        if isinstance(error, ConfigError):  # a constructor's own check (errors.check): name the whole setting
            raise ConfigError(setting(key, node, error.key), error.value, error.allowed) from None
        quoted = isinstance(error, ValueError) and isinstance(node, DictConfig)
        named = [(k, v) for k, v in (node.items() if quoted else ()) if isinstance(v, (int, float))
                 and re.search(rf"(?<![\w.-]){re.escape(str(v))}(?![\w.])", str(error))]
        if len(named) == 1:  # a plain ValueError that quotes one of the node's values (torch's "Invalid ...: -0.1")
            target = str(node.get("_target_", "?")).rsplit(".")[-1]
            raise ConfigError(f"{key}.{named[0][0]}", named[0][1], f"{target} refuses it: {error}") from None
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
    for path, n in nodes(node):
        raw = OmegaConf.to_container(n, resolve=False)
        if name in raw and not isinstance(raw[name], dict):
            value = raw[name]
            if isinstance(value, str) and value.startswith("${") and value.endswith("}") and ":" not in value:
                return value[2:-1]
            return ".".join(p for p in (key, path, name) if p)
    return f"{key}.{name}"


def trainer_refusal(error: BaseException, cfg: DictConfig) -> ConfigError:
    """Lightning's refusal of a Trainer argument as one line naming it (Lightning names it in backticks)."""
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


def summarize(trainer: Any, model: Any, cfg: DictConfig, start: Any, seconds: float, run_dir: Path) -> RunResult:
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
