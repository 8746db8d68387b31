"""Checkpoints that are never half-written, and the checks that make resuming safe and exact.

What a checkpoint holds (all of it is needed for an exact continuation):
- Lightning's own: weights, optimizer state, loop progress (epoch, step, batch), callback states
  (best checkpoint, early stopping, `train/steps_to_echo` bookkeeping), and the train loader's position
  within the epoch (`ChunkBlocks.state_dict`, so a mid-epoch resume continues with the next unseen block);
- the module's (`EchoLSTM.on_save_checkpoint`): the carried recurrent state of every stream (gathered
  from all processes) and every process's torch RNG state (dropout masks).

Only plain tensors and Python containers are stored, so checkpoints load with `torch.load(...,
weights_only=True)`; resuming loads them that way.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any

from echo_lstm.config import ConfigError

LAST = Path("checkpoints") / "last.ckpt"

# Keys that may change when resuming: how and where the run goes on, not what it computes.
RESUMABLE_OVERRIDES = (
    "resume", "threads", "device", "device.", "trainer.max_epochs", "trainer.max_steps",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "checkpoint.", "figure.", "hydra.",
)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`.

    A kill at any moment leaves either the old file or the new one, never a torn one. (Lightning's own
    save stages the file in the system temp dir and *moves* it, which is a copy, not a rename, whenever
    that dir is on another filesystem.)
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise CheckpointWriteError(f"could not write checkpoint {path}: {reason}; the previous one is intact") \
            from error


def checkpoint_io():
    """A Lightning CheckpointIO plugin whose saves are atomic (see `atomic_torch_save`)."""
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            atomic_torch_save(checkpoint, Path(path))

    return AtomicCheckpointIO()


def read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """Load a checkpoint safely (weights only: no code runs) or refuse with a one-line reason."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "no such checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, foreign pickle: all refused the same way
        text = str(error).strip()
        if "Weights only load failed" in text:
            reason = "it holds pickled objects beyond tensors and plain data; loading it could run code"
        else:
            reason = text.splitlines()[0][:120] if text else type(error).__name__
        raise ConfigError(key, str(path), f"is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "echo_train_state" not in ckpt:
        raise ConfigError(key, str(path), "is not an echo-lstm checkpoint (no model state or carried state)")
    return ckpt


def check_compatible(ckpt: dict[str, Any], cfg: Any, key: str, path: Path) -> None:
    """Refuse a checkpoint whose network differs from the config's (its weights would not fit)."""
    saved = ckpt.get("hyper_parameters", {})
    wanted = {"layers": cfg.layers, "state_size": cfg.model.state_size, "cell": cfg.model.cell}
    for name, value in wanted.items():
        if name in saved and saved[name] != value:
            raise ConfigError(key, str(path), f"was trained with {name}={saved[name]!r}, the config asks for "
                                              f"{value!r}; use the same setting or start a new run")


def latest_run(root: Path = Path("outputs/runs")) -> Path | None:
    """The most recently written run directory under `root` that holds `checkpoints/last.ckpt`."""
    runs = [p.parent.parent for p in root.glob("*/checkpoints/last.ckpt")] if root.is_dir() else []
    return max(runs, key=lambda p: (p / LAST).stat().st_mtime, default=None)


def resume_dir(resume: str | None, default: str) -> str:
    """Hydra resolver for `hydra.run.dir`: the run being resumed, else a new run dir."""
    if resume in (None, "", "None", "null"):
        return default
    if resume == "latest":
        found = latest_run()
        return str(found) if found else default
    return str(resume)


def check_resume(resume: str, run_dir: Path, original_overrides: list[str] | None, new_overrides: list[str]) -> None:
    """Refuse a resume that has nothing to resume, or whose overrides would change the experiment."""
    if resume == "latest" and not (run_dir / LAST).is_file():
        raise ConfigError("resume", resume, "no run under outputs/runs has a checkpoint to resume")
    if not run_dir.is_dir():
        raise ConfigError("resume", resume, "no such run directory")
    if not (run_dir / LAST).is_file():
        raise ConfigError("resume", resume, f"holds no checkpoint ({LAST} is missing): nothing to resume")
    if original_overrides is None:
        raise ConfigError("resume", resume, "is not a run directory of this app (.hydra/overrides.yaml is missing)")
    original = dict(split_override(o) for o in original_overrides)
    for override in new_overrides:
        key, value = split_override(override)
        if key.startswith(RESUMABLE_OVERRIDES) or key in RESUMABLE_OVERRIDES or original.get(key) == value:
            continue
        was = original.get(key, "its default")
        raise ConfigError(key, value, f"cannot change when resuming (the run used {was}): that would be a different "
                                      "experiment; start a new run instead")


def split_override(override: str) -> tuple[str, str]:
    """`+key=value` / `~key=value` / `key=value` -> (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def merged_overrides(original: list[str], new: list[str]) -> list[str]:
    """The original run's overrides, updated by the new ones (same key: the new value wins)."""
    merged = {split_override(o)[0]: o for o in original}
    merged.update({split_override(o)[0]: o for o in new})
    return list(merged.values())


def is_disk_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)
