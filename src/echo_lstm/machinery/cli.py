"""What `train.py` and `eval.py` share: one line and an exit code for every mistake, Hydra's included.

Hydra reports its own errors in several lines plus a hint, with exit code 1. Here it is asked to raise them
(`HYDRA_FULL_ERROR=1`, its documented switch), and each becomes one `error:` line, exit code 2 (`translate`).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from echo_lstm.machinery import rundir
from echo_lstm.machinery.config import CONF_DIR, OWNED, config_groups
from echo_lstm.machinery.distributed import drop_stray_rank_variables, is_launched_rank, is_secondary_rank
from echo_lstm.machinery.errors import LEAVES_NOTHING, ConfigError, EchoError, Escaped, Raw, disk_error, report
from echo_lstm.machinery.signatures import names
from echo_lstm.machinery.sweeps import stop as sweep_stop

# lightning-hydra-template's `trainer=` options, and the device option to type here instead.
TEMPLATE_TRAINERS = {"cpu": "device=cpu", "gpu": "device=gpu", "mps": "device=auto", "ddp_sim": "device=ddp_cpu",
                     "ddp": "device=multi_gpu on GPUs, device=ddp_cpu on CPU"}
KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "bool": "true or false",
         "String": "a string"}
NOT_NULL = {"seed": ": a run's data and weights follow from its seed; give an integer in [0, 2**32 - 1] "
                    "(any, e.g. seed=$RANDOM; the run records it)"}


def check_start(argv: list[str]) -> None:
    """What no setting can fix, said before Hydra meets it: a deleted current dir, arguments that are not text."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise ConfigError("cwd", Raw(os.environ.get("PWD", "?")), "no longer exists (it was deleted): cd into an "
                          "existing directory and run again") from None
    for arg in argv:
        if any("\udc80" <= c <= "\udcff" for c in arg):  # bytes the locale could not decode (LC_ALL=C, PYTHONUTF8=0)
            key, _, value = arg.partition("=")
            raise ConfigError(key, Raw(value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")),
                              "is not text in this locale's encoding: use a UTF-8 locale or PYTHONUTF8=1")


def require_optional_plugins(argv: list[str]) -> None:
    selected = [a for a in argv if a.lstrip("+~").startswith(("hparams_search=optuna", "hydra/sweeper=optuna"))]
    if selected and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        key, _, value = selected[0].partition("=")
        raise ConfigError(key, Raw(value), 'needs an optional plugin that is not installed: pip install -e '
                                           '".[optuna]"  (the Optuna sweeper, hydra-optuna-sweeper)')


def typed_value(argv: list[str], key: str) -> Raw:
    """The value typed for `key` on the command line (as typed), or '?'."""
    for arg in reversed(argv):
        name, _, value = arg.partition("=")
        if name.lstrip("+~") == key:
            return Raw(value)
    return Raw("?")


def translate(error: BaseException, argv: list[str]) -> ConfigError | None:
    """A Hydra or OmegaConf composition error as the app's one-line ConfigError; None for anything else."""
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) else error
    full_key = str(getattr(cause, "full_key", None) or "")
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if error.options:
            device = TEMPLATE_TRAINERS.get(option) if group == "trainer" else None
            hint = f" (the device is its own group here: {device})" if device else ""
            return ConfigError(group or option, Raw(option), f"must be one of {', '.join(error.options)}{hint}")
        return ConfigError("config", Raw(str(error.missing_cfg_file)), "no such config file")
    if isinstance(error, OverrideParseException):
        key, _, value = error.override.partition("=")
        return ConfigError(key, Raw(value), f"cannot be parsed ({str(error).splitlines()[0]}); quote values with "
                                            "spaces or special characters: key='a value'")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        leaf = full_key.rsplit(".", 1)[-1]
        if full_key.startswith("trainer.") and leaf in OWNED:
            return ConfigError(full_key, typed_value(argv, full_key), f"is set by {OWNED[leaf]}, not trainer.*")
        parent, siblings = getattr(cause, "parent_node", None), []
        if isinstance(parent, DictConfig):  # 'did you mean': the node's keys, and what its _target_ takes
            target = OmegaConf.select(parent, "_target_", throw_on_resolution_failure=False)
            siblings = [*map(str, parent), *names(target)]
        close = difflib.get_close_matches(leaf, dict.fromkeys(siblings), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return ConfigError(full_key, typed_value(argv, full_key), f"no such setting{hint}; `--cfg job` lists them")
    if isinstance(cause, ValidationError) and full_key:
        text = str(cause).splitlines()[0]
        if "is not Optional" in text:  # (its value reads None: say what was typed, null)
            return ConfigError(full_key, Raw("null"), f"cannot be null{NOT_NULL.get(full_key, '')}")
        wanted = re.search(r"could not be converted to (\w+)", text) or re.search(r"is not a valid (bool)", text)
        allowed = f"must be {KINDS.get(wanted[1], wanted[1])}" if wanted else text
        return ConfigError(full_key, Raw(str(cause.value)), allowed)
    unknown = re.search(r"^In '([^']+)': ConfigKeyError .*\nKey '([^']+)' not in '(\w+)'\n\s*full_key: (\S+)",
                        str(error))
    if isinstance(error, ConfigCompositionException) and unknown:  # a key added to a YAML file of a typed node
        where, leaf, schema, key = unknown.groups()
        return ConfigError(key, Raw(f"... (in conf/{where}.yaml)"), f"no such setting: {schema} "
                           f"(echo_lstm/machinery/config.py) has no {leaf}")
    if isinstance(error, (ConfigCompositionException, OmegaConfBaseException)):
        text = str(error).strip().splitlines()[0]
        detail = str(cause).strip().splitlines()[0] if cause is not None and cause is not error else ""
        key = full_key or "config"
        return ConfigError(key, typed_value(argv, key), f"{text} {detail}".strip())
    if isinstance(error, ValueError) and str(error).startswith("Config group override must be"):
        for group, options in config_groups().items():  # `logger=5`: Hydra says which type, not which group
            value = typed_value(argv, group)
            if value != "?" and value not in options:
                return ConfigError(group, value, f"must be one of {', '.join(options)}")
    if isinstance(error, yaml.YAMLError):  # a config file of the user's (hydra.searchpath) that is not YAML
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
        return ConfigError("config", Raw(where), f"is not valid YAML ({getattr(error, 'problem', None) or error})")
    return None


def print_help(config_name: str, argv: list[str], about: str, groups: tuple[str, ...] | None) -> None:
    """`--help`: the config groups (listed from conf/) and the composed config. Hydra's own help lists the groups
    by composing the config once per option (~1 s here); this takes a single composition."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[a for a in argv if not a.startswith("-")])
    listed = "\n".join(f"  {group}: {', '.join(options)}" for group, options in config_groups().items()
                       if groups is None or group in groups)
    print(f"{about}\n\n== Config groups (group=option) ==\n{listed}\n\n"
          f"== Config (set any key: key=value) ==\n{OmegaConf.to_yaml(cfg)}\n"
          "Hydra's flags: --cfg job|hydra|all, --info, --hydra-help. A mistake is one `error:` line; "
          "HYDRA_FULL_ERROR=1 shows Hydra's own report.")


def run(hydra_main: Callable[[], Any], argv: list[str], prepare: Callable[[list[str]], list[str]] | None = None,
        on_failure: Callable[[], None] = lambda: None, config_name: str = "train", about: str = "",
        groups: tuple[str, ...] | None = None) -> None:
    """Run a Hydra app with the app's error promise (see the module docstring); exits on any handled failure.

    `prepare` may rewrite the command line before Hydra composes (resume); `on_failure` cleans up after a
    refusal or an interrupted start (what this process claimed)."""

    def stop(signum: int, frame: Any) -> None:
        # A Ctrl-C before training takes the signal (machinery/graceful_stop.py): stop at once. Not through a
        # KeyboardInterrupt: raised inside an import, some libraries swallow it and go on half-imported.
        if is_launched_rank():  # a DDP rank started by rank 0, which speaks for the run
            os._exit(128 + signum)
        if rundir.sweep is not None:  # a sweep: its jobs stop, then it ends (its summary)
            return sweep_stop.on_signal(rundir.sweep.path, signum)
        kept = rundir.current is not None and rundir.current.trained()
        on_failure()  # removes what this process made, unless it has written a checkpoint
        where = f"; the run is kept in {rundir.current.path}" if kept else "; nothing was kept"
        with contextlib.suppress(OSError):  # (SIGHUP: the terminal may be gone)
            print(f"stopped by {signal.Signals(signum).name}{where}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    with contextlib.suppress(AttributeError, ValueError):  # a path the locale cannot encode (LC_ALL=C): escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    hydra_detail = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; we report (or re-raise, for the user who set it)
    logging.raiseExceptions = False  # a full disk must not turn each log line into a traceback
    logging.captureWarnings(True)  # to train.log, not the console (NoLibraryWarnings)
    quiet_thread_disk_errors()
    quiet = is_secondary_rank()  # DDP ranks > 0 fail alike; rank 0 speaks for them
    try:
        stray = drop_stray_rank_variables()
        if stray:
            print(f"warning: ignoring {', '.join(stray)} from the environment: no DDP launcher started this process",
                  file=sys.stderr)
        check_start(argv)
        require_optional_plugins(argv)
        if "--help" in argv or "-h" in argv:
            return print_help(config_name, argv, about, groups)
        if prepare is not None:
            argv = prepare(argv)
        sys.argv = [sys.argv[0], *argv]
        hydra_main()
    except Escaped as escaped:  # raised in the preflight callback: nothing may have passed its checks and claim
        fail(escaped.error, argv, on_failure, quiet, hydra_detail, before_the_run=True)
    except (Exception, KeyboardInterrupt) as error:  # (KeyboardInterrupt: from a joblib worker of a stopped sweep)
        fail(error, argv, on_failure, quiet, hydra_detail)


def quiet_thread_disk_errors() -> None:
    """A writer thread (TensorBoard's) that hits a full disk dies with a traceback on stderr; the main thread gets
    the same error at its next write and reports it in one line. So print nothing for those threads."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if disk_error(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def reader_left() -> None:
    """`| head`: the reader of stdout left. Say nothing more (the run's files stand) and exit as a shell reports it."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    sys.exit(141)  # 128 + SIGPIPE


def fail(error: BaseException, argv: list[str], on_failure: Callable[[], None], quiet: bool, hydra_detail: bool,
         before_the_run: bool = False) -> None:
    """Report `error` in one line and exit, after `on_failure` (what this process claimed); re-raise a bug with its
    traceback, unless it came before the run started (then nothing ran: still one line, exit code 2)."""
    stopped = sweep_stop.requested(rundir.sweep.path if rundir.sweep else None)
    if stopped is not None and not isinstance(error, EchoError):  # e.g. a worker killed by the terminal's Ctrl-C
        from echo_lstm.machinery.sweeps.summary import SweepSummary

        path = rundir.sweep.path
        on_failure()  # removes the sweep dir if no job has trained
        SweepSummary.end_stopped(path, stopped)
    if isinstance(error, BrokenPipeError):
        on_failure()  # (keeps a run that wrote a checkpoint)
        reader_left()
    cause = error
    while cause is not None and not isinstance(cause, EchoError):  # the app's own error inside OmegaConf's
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, EchoError):
        if isinstance(cause, LEAVES_NOTHING):
            on_failure()  # (a run that has written a checkpoint keeps its dir: rundir.Claim.release)
        sys.exit(report(cause, quiet))
    translated = None
    if not hydra_detail:
        where = f"{rundir.current.path}/.hydra (Hydra's files)" if rundir.current else "an output file"
        translated = translate(error, argv) or disk_error(error, where)
        if translated is None and before_the_run:
            text = " ".join(str(error).split())[:200] or "no detail"
            translated = ConfigError("config", Raw("..."), f"cannot be checked before the run "
                                                           f"({type(error).__name__}: {text})")
    if translated is not None or before_the_run:
        on_failure()
    if translated is None:
        raise error
    sys.exit(report(translated, quiet))


class NoLibraryWarnings(logging.Filter):
    """The console's filter (conf/hydra/job_logging/echo.yaml): Python warnings, which `run` sends to logging,
    reach train.log only. They are the libraries' (this app prints its own `warning:` lines), and some are noise
    for this app's runs: Lightning's `srun` hint on every SLURM login node, a deprecation of a dependency."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "py.warnings"


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_label() -> str:
    """`job 2 (layers=3)`: a multirun job, by number and the values of the keys the sweep varies."""
    from hydra.core.hydra_config import HydraConfig

    from echo_lstm.machinery.sweeps.naming import job_values

    hc = HydraConfig.get()
    return f"job {hc.job.num} ({' '.join(job_values(list(hc.overrides.task))) or 'defaults'})"
