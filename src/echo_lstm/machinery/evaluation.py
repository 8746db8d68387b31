"""eval.py's work: a checkpoint run chunk by chunk over fresh series (split EVAL, by default the training seed + 1;
the training seed itself is refused), twice: the state carried from chunk to chunk as in training (`acc`,
`boundary_acc`, ...), and reset at every chunk (`reset_*`: chance at the boundary by construction, the reference).

A checkpoint may come from a stranger: it is read with `weights_only=True` (no code runs), its network built only
if its `_target_` is one of conf/model/*.yaml's with plain arguments, first on the meta device, so that shapes that
do not fit its tensors are refused before memory is allocated. Light at import (no torch): `--help` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

from echo_lstm.machinery.config import CONF_DIR, PRECISIONS, DeviceConfig, check_memory, check_threads, validate_device
from echo_lstm.machinery.errors import ConfigError, Escaped, check, disk_error, relpath
from echo_lstm.machinery.preflight import check_output_subdir, claim_run_dir
from echo_lstm.machinery.resume import LAST, read_checkpoint
from echo_lstm.metrics import position_masks

KEY = "ckpt_path"
FULL = tuple(p for p in PRECISIONS if "16" not in p)  # no autocast: a reference measurement at full precision


@dataclass
class EvalConfig:
    ckpt_path: str | None = None  # required: a .ckpt file, or a run dir (its checkpoints/last.ckpt)
    seed: int | None = None  # null: the training seed + 1
    streams: int = MISSING
    length: int = MISSING  # steps per stream, cut to whole chunks
    echo_step: int | None = None  # null: the checkpoint's
    chunk_length: int | None = None  # null: the checkpoint's truncated_backprop_length
    threads: int = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def refuse_multirun(argv: list[str]) -> list[str]:
    """`cli.run`'s `prepare`: one evaluation per run (a sweep dir per evaluation is not worth its machinery)."""
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("-m", "--multirun", "eval.py evaluates one checkpoint per run; run it once per setting")
    return argv


def checkpoint_file(ckpt_path: str | None) -> Path:
    """The checkpoint a `ckpt_path` names (a run dir means its last.ckpt), absolute; refuses what is not there."""
    if ckpt_path is None or str(ckpt_path).strip() == "":
        raise ConfigError(KEY, ckpt_path, "is required: ckpt_path=<a .ckpt file or a run dir>")
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        if not (path / LAST).is_file():
            raise ConfigError(KEY, str(ckpt_path), f"is a directory without {LAST}: not a run dir with a checkpoint")
        path = path / LAST
    elif not path.is_file():
        raise ConfigError(KEY, str(ckpt_path), "no such file or directory")
    return path.resolve()


def check_settings(cfg: DictConfig) -> None:
    """Every check that needs neither torch nor the checkpoint (before the output dir is claimed)."""
    checkpoint_file(cfg.ckpt_path)
    checks = [
        ("seed", cfg.seed is None or 0 <= cfg.seed < 2**32, "must be null (training seed + 1) or in [0, 2**32 - 1]"),
        ("streams", cfg.streams >= 1, "must be an integer >= 1"),
        ("length", cfg.length >= 1, "must be an integer >= 1 (steps per stream)"),
        ("echo_step", cfg.echo_step is None or cfg.echo_step >= 0, "must be null (the checkpoint's) or >= 0"),
        ("chunk_length", cfg.chunk_length is None or cfg.chunk_length >= 1, "must be null (the checkpoint's) or >= 1"),
    ]
    for key, ok, allowed in checks:
        check(ok, key, OmegaConf.select(cfg, key), allowed)
    check_threads(cfg.threads)
    precision = cfg.device.precision
    check(str(precision) in FULL, "device.precision", precision, f"must be one of {', '.join(FULL)}")
    validate_device(cfg.device)
    # x, y (int64, twice while stacked), two runs' logits and losses
    check_memory("length", cfg.length, 96 * cfg.streams * cfg.length, f"with streams={cfg.streams} ")


class Preflight(Callback):
    """Check the settings and claim a new output dir before Hydra writes anything (as train.py's Preflight)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # Hydra turns an exception in a callback into a warning and goes on: carry it past (cli.run reports)
            check_output_subdir(config)
            check_settings(config)
            claim_run_dir(config, hint="")
        except Exception as error:
            raise Escaped(error) from None


def known_nets() -> set[str]:
    """The network targets this app builds: those in conf/model/*.yaml."""
    targets = (OmegaConf.select(OmegaConf.load(p), "net._target_") for p in (CONF_DIR / "model").glob("*.yaml"))
    return {t for t in targets if isinstance(t, str)}


def build_net(ckpt: dict[str, Any], path: Path) -> Any:
    """The checkpoint's network with its weights: a known `_target_`, plain arguments, shapes that fit."""
    import torch
    from hydra.utils import get_class

    spec = section(ckpt, "hyper_parameters").get("net")
    target = spec.get("_target_") if isinstance(spec, dict) else None
    if target not in known_nets():
        raise ConfigError(KEY, str(path), f"names the network {target!r}, not one this app builds "
                                          f"({', '.join(sorted(known_nets()))}); it is not run")
    args = {k: v for k, v in spec.items() if k != "_target_"}
    odd = [k for k, v in args.items() if k.startswith("_") or not isinstance(v, (bool, int, float, str, type(None)))]
    if odd:
        raise ConfigError(KEY, str(path), f"its network argument {odd[0]!r} is not a plain value")
    try:
        with torch.device("meta"):  # shapes only: nothing allocated until they are known to fit the file
            net = get_class(target)(**args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ConfigError(KEY, str(path), f"its network arguments do not fit {target} ({error})") from None
    weights = {k[len("net."):]: v for k, v in section(ckpt, "state_dict").items()
               if isinstance(k, str) and k.startswith("net.")}
    extra = sorted(set(weights) - set(net.state_dict()))
    if extra:
        raise ConfigError(KEY, str(path), f"its weight net.{extra[0]} is not one of its network's")
    for name, tensor in net.state_dict().items():
        got = weights.get(name)
        problem = ("is missing" if not torch.is_tensor(got) else
                   f"has shape {tuple(got.shape)}, its network config says {tuple(tensor.shape)}"
                   if got.shape != tensor.shape else "is not finite" if not torch.isfinite(got).all() else None)
        if problem:
            raise ConfigError(KEY, str(path), f"its weight net.{name} {problem}")
    net = net.to_empty(device="cpu")
    net.load_state_dict(weights, strict=True)
    return net.eval()


def section(ckpt: dict[str, Any], name: str) -> dict[str, Any]:
    """A part of the checkpoint that should be a dict (anything else counts as absent: a stranger's file)."""
    value = ckpt.get(name)
    return value if isinstance(value, dict) else {}


def hparam(ckpt: dict[str, Any], name: str, path: Path, minimum: int) -> int:
    value = section(ckpt, "hyper_parameters").get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(KEY, str(path), f"its {name} ({value!r}) is not an integer >= {minimum}")
    return value


def torch_device(dev: DictConfig) -> Any:
    """The one device evaluation runs on (any option of the `device` group); refuses one the machine lacks."""
    import torch

    name = {"gpu": "cuda", "auto": "cuda" if torch.cuda.is_available() else "cpu"}.get(dev.accelerator, dev.accelerator)
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(name, lambda: True)
    if not available():
        raise ConfigError("device.accelerator", dev.accelerator, f"no {name.upper()} device is visible on this "
                                                                 "machine; use device=cpu or device=auto")
    return torch.device(name)


def run_chunks(net: Any, x: Any, carry: bool) -> Any:
    """Logits [chunks, streams, T, 2] of chunks x [chunks, streams, T] run in order from a zero state, the state
    carried from each chunk to the next or reset to zeros at every chunk."""
    import torch

    state, logits = None, []
    for chunk in x:
        out, new_state = net(chunk, state)
        state = new_state if carry else None
        logits.append(out)
    return torch.stack(logits)


def scores(logits: Any, y: Any, echo_step: int) -> dict[str, float | None]:
    """Accuracies over the positions of each kind, and the mean cross-entropy over valid positions; None for a
    kind without positions (no boundary when echo_step = 0, no interior when echo_step >= T)."""
    import torch.nn.functional as F

    n_chunks, _, T = y.shape
    valid, boundary = position_masks(0, n_chunks, T, echo_step, y.device)
    correct = logits.argmax(-1) == y

    def rate(mask: Any) -> float | None:
        mask = mask.expand_as(correct)
        count = int(mask.sum())
        return int((correct & mask).sum()) / count if count else None

    ce = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1), reduction="none").reshape(y.shape).double()
    valid_all = valid.expand_as(ce)
    return {"acc": rate(valid), "boundary_acc": rate(boundary), "interior_acc": rate(valid & ~boundary),
            "loss": float(ce[valid_all].mean())}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The evaluation of `cfg.ckpt_path` (see the module docstring): eval.json's content."""
    import torch

    check_settings(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    path = checkpoint_file(cfg.ckpt_path)
    ckpt = read_checkpoint(path, KEY)
    net = build_net(ckpt, path)
    echo_step = cfg.echo_step if cfg.echo_step is not None else hparam(ckpt, "echo_step", path, 0)
    T = cfg.chunk_length if cfg.chunk_length is not None else hparam(ckpt, "truncated_backprop_length", path, 1)
    chunks = cfg.length // T
    if chunks < 1:
        raise ConfigError("length", cfg.length, f"is shorter than one chunk (chunk_length={T} steps)")
    if echo_step >= chunks * T:
        raise ConfigError("echo_step", echo_step, f"must be shorter than a stream ({chunks * T} steps)")
    trained_seed = section(ckpt, "datamodule_hyper_parameters").get("seed")
    seed = cfg.seed
    if seed is None:
        if not isinstance(trained_seed, int):
            raise ConfigError("seed", None, "the checkpoint does not record its training seed: set seed=<integer>")
        seed = (trained_seed + 1) % 2**32
    elif seed == trained_seed:
        raise ConfigError("seed", seed, "is the checkpoint's training seed; evaluate on other series "
                                        "(seed=null: the training seed + 1)")
    device = torch_device(cfg.device)
    from echo_lstm.data.series import EVAL, echo_series, to_chunks

    net = net.to(device, torch.float64 if cfg.device.precision == "64-true" else torch.float32)
    x, y = echo_series(seed, EVAL, 0, range(cfg.streams), chunks * T, echo_step)
    x, y = to_chunks(x, T).to(device), to_chunks(y, T).to(device)
    with torch.inference_mode():
        carried = scores(run_chunks(net, x, carry=True), y, echo_step)
        reset = scores(run_chunks(net, x, carry=False), y, echo_step)
    step = ckpt.get("global_step")
    return {**carried, "reset_boundary_acc": reset["boundary_acc"], "reset_acc": reset["acc"],
            "streams": cfg.streams, "steps": chunks * T, "chunks": chunks, "echo_step": echo_step,
            "chunk_length": T, "seed": seed, "ckpt_path": str(path),
            "trained_step": step if isinstance(step, int) else None}


def write(result: dict[str, Any], out_dir: Path) -> Path:
    """`<out dir>/eval.json`; a disk that refuses it is a WriteFailed (one line, exit 4)."""
    target = out_dir / "eval.json"
    try:
        target.write_text(json.dumps(result, indent=1) + "\n")
    except OSError as error:
        raise (disk_error(error) or error) from None
    return target


def table(result: dict[str, Any], written: Path) -> str:
    """The result as a two-column table (metric / value) and where it was written."""
    rows = [(k, "n/a" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)) for k, v in result.items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", *(f"{k:<{width}}  {v}" for k, v in rows)]
    shown = relpath(written)
    return "\n".join([*lines, f"written: {written if shown.startswith('..') else shown}"])
