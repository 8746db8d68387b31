"""The app's own settings (typed here: Hydra refuses a wrong type or unknown key while composing) and `validate`,
the value checks. conf/*.yaml is the one home of the defaults; nodes that build objects by `_target_` are checked
against their class's constructor (signatures.py). Stays light (no torch / Lightning): `--help` and config errors
answer fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from echo_lstm import metrics
from echo_lstm.machinery import signatures
from echo_lstm.machinery.errors import ConfigError, Raw, check
from echo_lstm.machinery.signatures import is_int, is_number

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


@dataclass
class DeviceConfig:
    accelerator: str = MISSING  # cpu | gpu | auto
    devices: Any = MISSING  # int >= 1, or "auto"
    strategy: str = MISSING  # auto | ddp
    num_nodes: int = MISSING
    precision: str = MISSING  # 32-true | 16-mixed | bf16-mixed | ...
    process_group_backend: Any = None  # gloo | nccl | None (Lightning's default)


TRAINER = "pytorch_lightning.Trainer"
# Trainer arguments this app sets itself, and where a user sets them instead.
OWNED = {
    "accelerator": "device.accelerator (the device config group: device=cpu|gpu|...)",
    "devices": "device.devices (the device config group)",
    "strategy": "device.strategy (the device config group: device=ddp_cpu|multi_gpu)",
    "num_nodes": "device.num_nodes (the device config group)",
    "precision": "device.precision (the device config group)",
    "logger": "the logger config group (logger=tensorboard|csv|many_loggers|wandb|mlflow)",
    "callbacks": "the callbacks config group (callbacks=default|none, callbacks.<name>.*)",
    "plugins": "this app (it installs atomic checkpoint writes)",
    "default_root_dir": "hydra.run.dir (each run writes into its own run dir)",
    "use_distributed_sampler": "this app (the streams are sharded by the data module, never by a sampler)",
}


def trainer_schema() -> Any:
    """The `trainer` node's schema: the installed Trainer's arguments with Lightning's defaults (read from its
    source), but OWNED; conf/trainer/default.yaml sets this app's defaults."""
    sig = signatures.signature(TRAINER)
    params = [p for p in (sig.params.values() if sig else ()) if p.name not in OWNED and
              p.default not in (signatures.REQUIRED, signatures.UNKNOWN)]
    return make_dataclass("TrainerConfig", [("_target_", str, field(default=TRAINER)),
                                            *((p.name, Any, field(default=p.default)) for p in params)])


@dataclass
class CheckpointConfig:
    every_n_steps: int = MISSING  # last.ckpt cadence in optimizer steps; also at each validation and the end


@dataclass
class FigureConfig:
    every_n_steps: int = MISSING  # the tutorial's figure every N chunks and at the last step; 0 = never
    streams: int = MISSING  # draw at most this many streams
    width: int = MISSING  # pixels
    height: int = MISSING


@dataclass
class StepsToEchoConfig:
    window: int = MISSING  # chunks in the moving window of train/boundary_acc


@dataclass
class TrainConfig:
    """train.yaml's top level."""

    layers: int = MISSING
    seed: int = MISSING
    target_acc: float = MISSING
    threads: int = MISSING
    optimized_metric: str = MISSING
    resume: Any = None  # a run dir (or "latest"): handled before Hydra composes (echo_lstm.machinery.resume)
    ckpt_path: Any = None  # a new run that starts from this checkpoint's weights and optimizer
    run_dir: str = MISSING
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING  # `_target_` + `_partial_: true`: torch.optim.<Name>(params, **rest)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: Any = MISSING  # trainer_schema()
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    figure: FigureConfig = field(default_factory=FigureConfig)
    steps_to_echo: StepsToEchoConfig = field(default_factory=StepsToEchoConfig)
    logger: Any = None
    callbacks: Any = None


STACKED_RNN = "echo_lstm.models.net.StackedRNN"


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    from echo_lstm.machinery.rundir import claimed_job_dir
    from echo_lstm.machinery.sweeps.naming import sweep_job_name

    schema = make_dataclass("TrainSchema", [("trainer", Any, field(default_factory=trainer_schema()))],
                            bases=(TrainConfig,))
    ConfigStore.instance().store(name="train_schema", node=schema)
    for resolver in (sweep_job_name, claimed_job_dir, slurm_gpus):
        if not OmegaConf.has_resolver(resolver.__name__):
            OmegaConf.register_new_resolver(resolver.__name__, resolver)


def slurm_gpus(accelerator: str, devices: Any) -> Any:
    """`hydra.launcher.gpus_per_node` (conf/hydra/launcher/slurm.yaml): one per device for a GPU job, none on CPU."""
    return devices if accelerator in ("gpu", "cuda") else None


def config_groups() -> dict[str, list[str]]:
    """The app's config groups and their options, from conf/ (e.g. {"optimizer": ["adagrad", "adam", ...]})."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONF_DIR.iterdir()) if d.is_dir() and d.name != "hydra"}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


NODES = ("data", "model", "model.net", "optimizer", "trainer", "device", "checkpoint", "figure", "steps_to_echo")


def check_nodes(cfg: Any) -> None:
    """Refuse a plain value where the config needs a node of settings (`model.net=5`, `callbacks.early_stopping=5`):
    every later check and Lightning would fail on it with a traceback."""
    for key in NODES:
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if not isinstance(node, DictConfig):
            raise ConfigError(key, node, f"must be a group of settings ({key}.<name>=value), not a plain value")
    for group in ("callbacks", "logger"):
        nodes = OmegaConf.select(cfg, group)
        if nodes is not None and not isinstance(nodes, DictConfig):
            raise ConfigError(group, nodes, f"must be a config option ({group}=<option>) or null")
        for name, node in (nodes.items_ex(resolve=False) if nodes is not None else ()):
            if node is not None and not isinstance(node, DictConfig):
                raise ConfigError(f"{group}.{name}", node, f"must be a group of settings or null ({group}.{name}=null "
                                  "drops it)")


def check_finite(cfg: Any) -> None:
    """Refuse NaN and infinity anywhere in the config: no setting of this app means anything with them."""
    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, (dict, list)):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{prefix}{key}", value, "must be a finite number")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def validate(cfg: Any) -> list[str]:
    """Check every value; raise ConfigError on the first bad one, return warnings for odd-but-legal ones."""
    check_nodes(cfg)
    check_finite(cfg)
    d, dev, t = cfg.data, cfg.device, cfg.trainer
    check(cfg.layers >= 1, "layers", cfg.layers, "must be an integer >= 1")
    check(0 <= cfg.seed < 2**32, "seed", cfg.seed, "must be an integer in [0, 2**32 - 1]")
    check(0 < cfg.target_acc <= 1, "target_acc", cfg.target_acc, "must be in (0, 1]")
    check_threads(cfg.threads)
    check(metrics.find(cfg.optimized_metric) is not None, "optimized_metric", cfg.optimized_metric,
          f"must be one of the logged metrics: {', '.join(metrics.NAMES)}")
    check(cfg.ckpt_path is None or Path(str(cfg.ckpt_path)).expanduser().is_file(), "ckpt_path", cfg.ckpt_path,
          "no such checkpoint file")
    for key in ("data", "model", "optimizer", "trainer", "callbacks", "logger"):
        check_targets(cfg, key)
    check_layers_home(cfg)
    validate_optimizer(cfg.optimizer)
    validate_trainer(t)
    validate_monitors(cfg.callbacks)
    check(cfg.checkpoint.every_n_steps >= 0, "checkpoint.every_n_steps", cfg.checkpoint.every_n_steps,
          "must be >= 0 (0 = only at validations and at the end)")
    f = cfg.figure
    check(f.every_n_steps >= 0, "figure.every_n_steps", f.every_n_steps, "must be >= 0 (0 = no figure)")
    check(1 <= f.streams <= 64, "figure.streams", f.streams, "must be an integer in [1, 64]")
    check(100 <= f.width <= 4000, "figure.width", f.width, "must be in [100, 4000] (pixels)")
    check(100 <= f.height <= 4000, "figure.height", f.height, "must be in [100, 4000] (pixels)")
    check(cfg.steps_to_echo.window >= 1, "steps_to_echo.window", cfg.steps_to_echo.window,
          "must be an integer >= 1 (chunks)")
    world = validate_device(dev)
    if world is not None:
        check(d.batch_size % world == 0, "data.batch_size", d.batch_size,
              f"must be divisible by the number of processes ({world} = device.devices * device.num_nodes): "
              "each process owns a fixed set of streams")
    check_model_memory(cfg)
    warnings = []
    T = d.truncated_backprop_length
    if min(d.batch_size, T, d.chunks_per_batch) < 1:
        return warnings  # the data module refuses them (its own checks, when it is built)
    batches = -(-(d.total_series_length // d.batch_size // T) // d.chunks_per_batch)
    if is_int(t.val_check_interval) and t.val_check_interval > batches:
        warnings.append(f"trainer.val_check_interval={t.val_check_interval} is more than the {batches} training "
                        "batch(es) of an epoch: validating once per epoch instead")
    if T <= d.echo_step < d.total_series_length // d.batch_size // T * T:  # (longer: the data module refuses it)
        warnings.append(f"data.echo_step={d.echo_step} >= data.truncated_backprop_length={T}: every target lies in "
                        "an earlier chunk, beyond the reach of truncated backpropagation")
    return warnings


def check_targets(cfg: Any, key: str) -> None:
    """Every setting of a node that builds an object (`_target_`), and of the nodes inside it, against the class's
    constructor (signatures.py): no unknown key, plain types as annotated. Its ranges are the constructor's."""
    node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    if not isinstance(node, DictConfig):
        return
    target = OmegaConf.select(node, "_target_", throw_on_resolution_failure=False)
    sig = signatures.signature(target) if isinstance(target, str) else None
    for name in map(str, node.keys()):
        if OmegaConf.is_interpolation(node, name):
            continue  # (`model.optimizer: ${optimizer}`: checked at its home)
        try:
            value = node[name]
        except Exception:  # an interpolation that resolves only later (${hydra:...} before the run starts)
            continue
        if isinstance(value, DictConfig):
            check_targets(cfg, f"{key}.{name}")
        elif sig is not None and not name.startswith("_"):
            wrong = signatures.problem(sig, name, OmegaConf.to_container(value) if isinstance(value, ListConfig)
                                       else value)
            check(wrong is None, f"{key}.{name}", Raw(value) if isinstance(value, str) else value, wrong or "")


def check_layers_home(cfg: Any) -> None:
    """`layers` is the one home of the layer count: `model.net.layers` only reads it (`${layers}`), so the run, its
    hparams.yaml, the HParams tab and the memory check all see the same number."""
    net = OmegaConf.to_container(cfg.model.net, resolve=False)
    if "layers" in net and net["layers"] != "${layers}":
        raise ConfigError("model.net.layers", net["layers"], f"is set by layers, its one home: type "
                          f"layers={net['layers']} instead")


FLOAT32_MAX = 3.4028234663852886e38


def validate_optimizer(o: Any) -> None:
    target = o.get("_target_") if hasattr(o, "get") else None
    check(isinstance(target, str) and "." in target, "optimizer._target_", target,
          "must name an optimizer class, e.g. torch.optim.Adagrad (see conf/optimizer/)")
    check(o.get("_partial_") is True, "optimizer._partial_", o.get("_partial_"),
          "must be true: the model gives the optimizer its parameters")
    for key, value in o.items():  # torch applies them in float32: a larger number overflows there
        if is_number(value):
            check(abs(value) < FLOAT32_MAX, f"optimizer.{key}", value, "must be below 3.4e38 (a float32's range)")


COUNTS = {  # Trainer counts that must be >= 1, and the other values each one allows
    "max_epochs": (-1, None), "max_steps": (-1,), "check_val_every_n_epoch": (None,),
    "log_every_n_steps": (None,)}


def validate_trainer(t: Any) -> None:
    for key, also in COUNTS.items():
        check(t[key] in also or (is_int(t[key]) and t[key] >= 1), f"trainer.{key}", t[key],
              "must be an integer >= 1" + "".join(" or null" if a is None else f" or {a}" for a in also))
    vci = t.val_check_interval
    check(vci is None or (is_int(vci) and vci >= 1) or (isinstance(vci, float) and 0 < vci <= 1),
          "trainer.val_check_interval", vci,
          "must be an integer >= 1 (training batches between validations) or a fraction of an epoch in (0, 1]")
    for key in ("limit_train_batches", "limit_val_batches", "overfit_batches"):
        v = t[key]
        check(v is None or (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1), f"trainer.{key}",
              v, "must be an integer >= 0 (batches) or a fraction in [0, 1]")
    check(t.accumulate_grad_batches == 1, "trainer.accumulate_grad_batches", t.accumulate_grad_batches,
          "must be 1: truncated BPTT takes one optimizer step per chunk, each from the state the previous step "
          "left (to average over more data, raise data.batch_size)")
    clip = t.gradient_clip_val
    check(clip is None or (is_number(clip) and clip >= 0), "trainer.gradient_clip_val", clip,
          "must be a number >= 0 (0 or null: no clipping)")
    check(t.gradient_clip_algorithm in (None, "norm", "value"), "trainer.gradient_clip_algorithm",
          t.gradient_clip_algorithm, "must be norm or value")
    check(t.fast_dev_run is False or t.fast_dev_run is True or (is_int(t.fast_dev_run) and t.fast_dev_run >= 0),
          "trainer.fast_dev_run", t.fast_dev_run, "must be true, false or a number of batches >= 0")
    check(t.deterministic in (None, True, False, "warn"), "trainer.deterministic", t.deterministic,
          "must be true, false, warn or null")
    check(t.num_sanity_val_steps is None or (is_int(t.num_sanity_val_steps) and t.num_sanity_val_steps >= -1),
          "trainer.num_sanity_val_steps", t.num_sanity_val_steps, "must be an integer >= -1 (-1: all) or null")
    for key in ("min_epochs", "min_steps"):
        check(t[key] is None or (is_int(t[key]) and t[key] >= 0), f"trainer.{key}", t[key],
              "must be an integer >= 0 or null")


def validate_monitors(callbacks: Any) -> None:
    for name, callback in (callbacks or {}).items():
        monitor = callback.get("monitor") if callback is not None and hasattr(callback, "get") else None
        if monitor is not None:
            check(metrics.find(monitor) is not None, f"callbacks.{name}.monitor", monitor,
                  f"must be one of the logged metrics: {', '.join(metrics.NAMES)}")


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


def validate_device(dev: Any) -> int | None:
    """Check `device.*`; returns the number of processes when it is known without looking at the hardware."""
    check(dev.accelerator in ACCELERATORS, "device.accelerator", dev.accelerator,
          f"must be one of {', '.join(ACCELERATORS)}")
    devices = dev.devices
    check(devices == "auto" or (is_int(devices) and devices >= 1), "device.devices", devices,
          "must be an integer >= 1 or 'auto'")
    check(dev.num_nodes >= 1, "device.num_nodes", dev.num_nodes, "must be an integer >= 1")
    check(str(dev.precision) in PRECISIONS, "device.precision", dev.precision,
          f"must be one of {', '.join(PRECISIONS)}")
    # ddp_spawn would pickle the run into fresh processes (the figure's font cannot be unpickled) and start them
    # outside rank 0's watch: this app starts its DDP ranks itself (distributed.py)
    check(dev.strategy in ("auto", "ddp"), "device.strategy", dev.strategy,
          "must be auto or ddp (ddp_spawn is not supported: with ddp this app starts and watches the processes)")
    return devices * dev.num_nodes if is_int(devices) else None


def check_threads(threads: int) -> None:
    cores = available_cores()
    check(0 <= threads <= cores, "threads", threads,
          f"must be between 0 (torch's default) and {cores}, the cores this process may use")


def check_memory(key: str, value: Any, need: int, what: str = "") -> None:
    """Refuse `key=value` when the tensors it makes (`need` bytes) cannot fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: nothing to compare with
        return
    check(need <= total, key, value,
          f"{what}needs about {need / 2**30:.1f} GiB of memory; this machine has {total / 2**30:.1f} GiB")


def check_model_memory(cfg: Any) -> None:
    d = cfg.data
    # A training epoch's series (x, y as int64, generated per stream then stacked: ~2 copies) and the validation's.
    check_memory("data.total_series_length", d.total_series_length, 32 * d.total_series_length)
    check_memory("data.val_series_length", d.val_series_length, 32 * d.val_series_length)
    if OmegaConf.select(cfg, "model.net._target_") == STACKED_RNN and is_int(cfg.model.net.get("state_size")):
        h = cfg.model.net.state_size
        params = cfg.layers * (4 * h * (h + h + 2)) + 2 * h + 2  # an upper bound for any cell (LSTM: 4 gates)
        # weights, gradients, two optimizer buffers (float32)
        check_memory("model.net.state_size", h, 4 * 4 * params)
