"""Continuing a run (`python train.py resume=<run dir>|latest [resumable overrides]`), and reading checkpoints safely.

Before Hydra composes anything, `resume=` becomes the run's own command line: its stored overrides (checked: this
app's keys with plain values only, so a run dir from someone else cannot name code to run), updated by the new
ones (`RESUMABLE` keys, or the run's own values), in its own dir, with this session's Hydra files in
`.hydra/resumed-<time>/`: the config is composed exactly as the original was, and a refused resume writes nothing.
Checkpoints load with `weights_only=True` (no code runs) and are checked against the config before training.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from echo_lstm.machinery.errors import ConfigError, Finished, hydra_quote

LAST = Path("checkpoints") / "last.ckpt"
RESULT = "result.json"  # written when a run finishes: a finished run is read-only to resume= (unless limits rise)
LIMITS = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time")
RUNS = Path("outputs/runs")

# Keys whose change does not make a different experiment: how and where the run goes on (a "." ends a prefix).
RESUMABLE = ("threads", "device", "device.", *LIMITS, "trainer.enable_progress_bar", "trainer.log_every_n_steps",
             "trainer.enable_model_summary", "checkpoint.", "figure.", "optimized_metric")
# Command-line flags with which Hydra only shows something: no run, so no lock.
SHOW_ONLY = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")
# Keys whose value is where files go: a stored one could point this app's writes (and deletions) anywhere.
PATH_KEYS = ("run_dir", "dirpath", "save_dir", "filename", "tracking_uri", "dir", "log_dir", "default_root_dir")
CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def _parse(override: str, where: str = "resume") -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override)
    except Exception:
        raise ConfigError(where, override, "is not a valid override") from None


def _key(override: str) -> str:
    return _parse(override).key_or_group


def resumed_argv(argv: list[str]) -> list[str]:
    """`argv` with `resume=<dir>` replaced by that run's command line; unchanged without `resume=`. Locks the run
    dir unless the command only shows something (`--cfg`, `--help`)."""
    from echo_lstm.machinery import rundir

    given = [a for a in argv if a.split("=", 1)[0].lstrip("+~") == "resume"]
    value = _parse(given[-1]).value() if given else None
    if value in (None, "null", ""):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("resume", value, "resumes one run; it cannot be combined with a multirun (-m)")
    run = Path(str(value)).expanduser()
    if value == "latest":  # the run whose last.ckpt was written last
        runs = [p.parent.parent for p in RUNS.glob("*/checkpoints/last.ckpt")] if RUNS.is_dir() else []
        run = max(runs, key=lambda p: (p / LAST).stat().st_mtime, default=None)
        if run is None:
            raise ConfigError("resume", value, f"no run under {RUNS} has a checkpoint to resume")
    if not run.is_dir():
        raise ConfigError("resume", str(value), "no such run directory")
    placed = [a for a in argv if a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    if placed:  # (after the resumed dir is known to exist: the right setting is blamed)
        key, _, where = placed[-1].partition("=")
        why = "is the resumed run's own dir" if key == "hydra.run.dir" else "is .hydra/resumed-<time> when resuming"
        raise ConfigError(key, where, f"cannot be set with resume=: it {why}; drop it")
    rundir.check_contents(run, "resume")  # before reading anything of it: no links, nothing but files and dirs
    hydra_dir = run / ".hydra"
    if not (hydra_dir / "overrides.yaml").is_file() or not (hydra_dir / "config.yaml").is_file():
        raise ConfigError("resume", str(value), "is not a run directory of this app (.hydra/overrides.yaml and "
                                                "config.yaml are missing)")
    if not (run / LAST).is_file():
        raise ConfigError("resume", str(value), f"holds no checkpoint ({LAST} is missing): nothing to resume")
    try:
        stored = [str(o) for o in yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []]
        stored_cfg = OmegaConf.load(hydra_dir / "config.yaml")
        hydra_yaml = hydra_dir / "hydra.yaml"
        choices = OmegaConf.to_container(OmegaConf.load(hydra_yaml).hydra.runtime.choices) \
            if hydra_yaml.is_file() else {}
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        raise ConfigError("resume", str(value), f"its .hydra files are not readable ({reason})") from None
    # (hparams_search: a search's job holds its sampled values; resuming it runs that one job, not a new search)
    stored = [o for o in stored if o.split("=", 1)[0].lstrip("+~") not in ("resume", "ckpt_path", "hparams_search")]
    check_stored_overrides(stored, str(run))
    new = [a for a in argv if not a.startswith("-") and a not in given]
    flags = [a for a in argv if a.startswith("-")]
    check_resumable(new, stored_cfg, choices)
    if (run / RESULT).is_file() and not any(_key(o) in LIMITS for o in new):
        raise Finished(f"{run} is a finished run (its {RESULT}): nothing to resume, it is kept as it is; to train "
                       f"it further raise trainer.max_steps or trainer.max_epochs with resume=, or start a new run "
                       f"from it: ckpt_path={run / LAST}")
    merged = {_key(o): o for o in [*stored, *new]}
    now = time.strftime("%Y-%m-%d_%H-%M-%S")
    if not any(a in SHOW_ONLY for a in flags):
        rundir.current = rundir.claim_existing(run, "resume", appends=("train.log",))
        rundir.current.added.append(run / ".hydra" / f"resumed-{now}")
    return [*flags, *merged.values(), f"resume={hydra_quote(str(run))}", f"hydra.run.dir={hydra_quote(str(run))}",
            f"hydra.output_subdir={hydra_quote(f'.hydra/resumed-{now}')}"]


def check_stored_overrides(stored: list[str], run: str) -> None:
    """Accept from a run dir only overrides of this app's schema (or its groups' options) with plain values: no
    sweeps, no added keys, no code, Hydra or path keys, no interpolations."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.types import OverrideType

    from echo_lstm.machinery.config import CONF_DIR, config_groups, register_configs

    def refuse(text: str, why: str) -> ConfigError:
        return ConfigError(f"resume={run}: stored override", text, f"{why}; a run dir's stored overrides may only "
                           "set this app's keys to plain values (edit its .hydra/overrides.yaml)")

    groups = config_groups()
    parsed = [(text, _parse(text, f"resume={run}: stored override")) for text in stored]
    settings = []
    for text, override in parsed:
        key, value = override.key_or_group, override.value()
        if override.is_sweep_override():
            raise refuse(text, "is a sweep")
        if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD) or text.startswith("+"):
            raise refuse(text, "adds a key that is not in this app's schema")
        if any(code in key for code in CODE_KEYS) or key.startswith("hydra"):
            raise refuse(text, "names code or Hydra settings")
        if key.rsplit(".", 1)[-1] in PATH_KEYS:
            raise refuse(text, "names a path (where this app writes)")
        if key in groups:
            if value not in groups[key] and override.type != OverrideType.DEL:
                raise refuse(text, f"is not an option of the {key} group ({', '.join(groups[key])})")
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            raise refuse(text, "is not a plain value")
        elif isinstance(value, str) and "${" in value:
            raise refuse(text, "is an interpolation")
        else:
            settings.append((text, key))
    if settings:  # every key must exist in the config that the (checked) group choices compose
        register_configs()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            schema = compose("train", overrides=[text for text, o in parsed if o.key_or_group in groups])
        for text, key in settings:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(schema, parent) if parent else schema
            if node is None or not hasattr(node, "keys") or leaf not in node:
                raise refuse(text, "is not a key of this app's config")


def check_resumable(new: list[str], stored_cfg: Any, choices: dict[str, Any]) -> None:
    """Refuse a new override that would change the experiment: not RESUMABLE and not the run's own value."""
    for text in new:
        override = _parse(text)
        key = override.key_or_group
        if key in RESUMABLE or key.startswith(tuple(k for k in RESUMABLE if k.endswith("."))) \
                or key.split(".")[0] == "hydra":
            continue
        was = choices.get(key) if key in choices else OmegaConf.select(stored_cfg, key, default="<unset>")
        if override.value() != was:
            raise ConfigError(key, override.value(), f"cannot change when resuming (the run used {was!r}): that "
                              "would be a different experiment; start a new run instead (or ckpt_path=<its last.ckpt>)")


# ---------------------------------------------------------------------------------------------- checkpoints
REQUIRED = ("state_dict", "optimizer_states", "loops", "callbacks", "global_step", "epoch", "echo_train_state",
            "echo_rng_states")
PATH_STATE = ("best_model_path", "kth_best_model_path", "last_model_path")


def drop_foreign_paths(ckpt: dict[str, Any], checkpoints: Path) -> None:
    """Empty the file paths in a checkpoint's callback states (ModelCheckpoint's best-k bookkeeping, which
    Lightning restores and later deletes) unless every one names a regular `.ckpt` file inside `checkpoints`
    (rundir.own_file): a crafted or moved checkpoint then starts its best-k afresh instead of naming files."""
    from echo_lstm.machinery.rundir import own_file

    def own(path: Any) -> bool:
        return isinstance(path, str) and path.endswith(".ckpt") and own_file(path, checkpoints)

    states = ckpt.get("callbacks") if isinstance(ckpt, dict) else None
    for state in (states.values() if isinstance(states, dict) else ()):
        if not isinstance(state, dict) or not any(k in state for k in ("best_k_models", *PATH_STATE)):
            continue
        models = state.get("best_k_models", {})
        paths = [state.get(k, "") for k in PATH_STATE]
        fine = isinstance(models, dict) and all(own(p) for p in models) and all(p == "" or own(p) for p in paths) \
            and state.get("kth_best_model_path", "") in ("", *models)
        if not fine:
            state.update({"best_k_models": {}, "best_model_score": None}, **dict.fromkeys(PATH_STATE, ""))


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
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a raw pickle (a torch checkpoint is a zip archive)
        if "Weights only load failed" in text and ("Unsupported global" in text or pickled):
            reason = "it holds pickled objects beyond tensors and plain data; loading it could run code"
        elif "Weights only load failed" in text:
            reason = "corrupt, or not a torch file"
        else:
            reason = text.splitlines()[0][:120] if text else type(error).__name__
        raise ConfigError(key, str(path), f"is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "echo_train_state" not in ckpt:
        raise ConfigError(key, str(path), "is not an echo-lstm checkpoint (no model state or carried state)")
    return ckpt


def check_checkpoint(ckpt: dict[str, Any], net: Any, net_config: dict[str, Any], streams: int, key: str,
                     path: Path, optimizer: Any = None) -> None:
    """Refuse a checkpoint that does not fit `net` (the config's network, built from `net_config`) or lacks what
    resuming needs. Needs torch only: a refusal comes before Lightning is imported."""
    import torch

    def refuse(why: str) -> ConfigError:
        return ConfigError(key, str(path), why)

    saved = (ckpt.get("hyper_parameters") or {}).get("net") or {}
    for name in ("cell", "layers", "state_size"):
        if name in saved and name in net_config and saved[name] != net_config[name]:
            shown = "layers" if name == "layers" else f"model.net.{name}"
            raise refuse(f"was trained with {shown}={saved[name]!r}, the config asks for {net_config[name]!r}; use "
                         "the same setting or start a new run")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise refuse(f"lacks {', '.join(missing)}: an incomplete or edited checkpoint")
    state_dict = ckpt["state_dict"]
    expected = {f"net.{name}": tensor for name, tensor in net.state_dict().items()}
    names = set(state_dict) if isinstance(state_dict, dict) else set()
    if not isinstance(state_dict, dict) or names != set(expected):
        raise refuse(f"does not fit this network (parameters differ: {', '.join(sorted(names ^ set(expected))[:3])})")
    for name, tensor in expected.items():
        got = state_dict[name]
        if not torch.is_tensor(got) or got.shape != tensor.shape:
            raise refuse(f"does not fit this network ({name} has shape {tuple(getattr(got, 'shape', ()))}, the "
                         f"config's network {tuple(tensor.shape)})")
    if optimizer is not None:
        check_optimizer_state(ckpt["optimizer_states"], optimizer, key, path)
    state = ckpt.get("echo_train_state")
    want = (net.layers, net.parts, streams, net.state_size) if hasattr(net, "parts") else None
    if state is not None and (not torch.is_tensor(state) or (want is not None and tuple(state.shape) != want)):
        raise refuse(f"its carried state has shape {tuple(getattr(state, 'shape', ()))}, this run carries {want} "
                     "([layers, parts, streams, state_size])")


def check_optimizer_state(states: Any, optimizer: Any, key: str, path: Path) -> None:
    """Refuse optimizer state that does not fit the config's optimizer over `net`'s parameters (`optimizer`, built
    for this check): loaded into it and stepped once with zero gradients, as training would, and shape-checked (a
    misfit would otherwise fail inside Lightning with a traceback, after the run dir was written)."""
    import torch

    def refuse(why: str) -> ConfigError:
        return ConfigError(key, str(path), f"its optimizer state does not fit {type(optimizer).__name__} over this "
                           f"network ({why}); use the run's own optimizer settings or start a new run")

    if not isinstance(states, list) or len(states) != 1:
        raise refuse(f"{len(states) if isinstance(states, list) else 'no'} optimizer states, this run has 1")
    try:
        optimizer.load_state_dict(states[0])
    except Exception as error:
        raise refuse(" ".join(str(error).split())[:160] or type(error).__name__) from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise refuse(f"{name} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}")
            param.grad = torch.zeros_like(param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.step(lambda: torch.zeros(()))
    except Exception as error:
        raise refuse(f"a step fails: {type(error).__name__}: {' '.join(str(error).split())[:120]}") from None


@dataclass
class Start:
    """Where a run starts: a checkpoint (its path, step and epoch), and whether it continues in place."""

    path: Path | None = None
    step: int = 0
    epoch: int = 0
    in_place: bool = False


def starting_point(cfg: DictConfig, run_dir: Path) -> Start:
    """The checkpoint to start from, checked against the config: `resume=` continues the run from its `last.ckpt`;
    a requeued SLURM job continues from the `last.ckpt` in its own run dir (only the job that marked the dir, and
    only from a checkpoint it saved); `ckpt_path=<file>` starts a new run from that checkpoint."""
    from hydra.utils import instantiate

    from echo_lstm.machinery.rundir import SLURM_JOB

    job = os.environ.get("SLURM_JOB_ID")
    if cfg.resume is not None:
        key, path, in_place = "resume", run_dir / LAST, True
    elif (run_dir / SLURM_JOB).is_file() or (run_dir / LAST).is_file():
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
    ckpt = read_checkpoint(path, key)
    if key == "hydra.run.dir" and ckpt.get("echo_slurm_job") != os.environ.get("SLURM_JOB_ID"):
        saver = f"SLURM job {ckpt['echo_slurm_job']}" if ckpt.get("echo_slurm_job") else "no SLURM job"
        raise ConfigError(key, str(run_dir), f"its {LAST} was saved by {saver}, not by this requeued SLURM job "
                          f"{job}: a foreign checkpoint, not continued")
    net_config = OmegaConf.to_container(cfg.model.net, resolve=True)
    net = instantiate(net_config)
    try:  # a throwaway optimizer over a throwaway network, to check the checkpoint's state (a bad one: built() says)
        optimizer = instantiate(OmegaConf.to_container(cfg.optimizer, resolve=True))(net.parameters())
    except Exception:
        optimizer = None
    check_checkpoint(ckpt, net, net_config, cfg.data.batch_size, key, path, optimizer)
    return Start(path, int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0)), in_place)
