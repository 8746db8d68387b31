"""Typed config schema and value checks.

Hydra composes `conf/train.yaml` on top of `TrainConfig` (registered in the ConfigStore as
`train_schema`), so a wrong *type* (`layers=abc`) or an unknown key (`layerz=5`) is refused by Hydra
itself. `validate` then checks *values* (ranges, cross-field rules) before anything heavy is imported.

This module must stay light: it is imported for `--help`, `--cfg` and config errors, which must answer
fast, so no torch / Lightning imports here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING


class ConfigError(ValueError):
    """A user-facing config mistake: one line naming the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")

    def __reduce__(self) -> tuple:
        # Picklable with its own arguments: a joblib worker sends a failed job's error back to the sweep.
        return (ConfigError, (self.key, self.value, self.allowed))


@dataclass
class DataConfig:
    total_series_length: int = 50000  # training bits per epoch, over all streams
    batch_size: int = 5  # number of parallel streams (global, over all processes)
    truncated_backprop_length: int = 15  # steps per chunk; one optimizer step per chunk
    echo_step: int = 3  # target = input delayed by this many steps
    chunks_per_batch: int = 64  # chunks handed to one training_step (see model.py: why)
    val_series_length: int = 10000  # validation bits, over all streams; fixed series
    seed: int = II("seed")


@dataclass
class ModelConfig:
    cell: str = "lstm"  # lstm | gru | rnn
    layers: int = II("layers")
    state_size: int = 4
    dropout: float = 0.0  # on each layer's output (tutorial part 6 uses 0.5)
    forget_bias: float = 0.0  # TensorFlow's LSTMCell adds 1.0 (tutorial_parity)
    per_chunk_hooks: bool = False  # run every chunk through Lightning's backward/step hooks (slower)


@dataclass
class OptimizerConfig:
    name: str = "adagrad"  # adagrad | adam | sgd
    lr: float = 0.3
    initial_accumulator_value: float = 0.0  # Adagrad only; TensorFlow starts at 0.1
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    eps: float = 1e-10


@dataclass
class DeviceConfig:
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # int >= 1, or "auto"
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    num_nodes: int = 1
    precision: str = "32-true"  # 32-true | 16-mixed | bf16-mixed
    process_group_backend: Any = None  # gloo | nccl | None (Lightning's default)


@dataclass
class TrainerConfig:
    """Passed through to `pytorch_lightning.Trainer` (the keys are its argument names)."""

    max_epochs: int = 100
    max_steps: int = -1  # counted in optimizer steps, i.e. chunks
    val_check_interval: int = 2  # validate every N training batches (N * chunks_per_batch chunks)
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 1  # in training batches
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    limit_val_batches: Any = None
    deterministic: Any = None
    profiler: Any = None


@dataclass
class CheckpointConfig:
    every_n_steps: int = 1000  # also saved at each validation and at the end


@dataclass
class FigureConfig:
    """The tutorial's figure (loss so far; input, target, prediction bars per stream) in TensorBoard."""

    every_n_steps: int = 100  # draw every N chunks (optimizer steps); 0 = never
    streams: int = 5  # draw at most this many streams
    width: int = 900  # pixels
    height: int = 500  # pixels
    background: bool = True  # draw in a worker process, off the training loop (false: inline)


@dataclass
class StepsToEchoConfig:
    window: int = 32  # chunks in the moving window of train/boundary_acc (rounded up to whole batches)


@dataclass
class TrainConfig:
    layers: int = 3
    seed: int = 1234
    target_acc: float = 0.999  # stop once val/acc and val/boundary_acc reach this
    threads: int = 1  # torch intra-op threads per process; 0 = torch default
    optimized_metric: str = "val/boundary_acc"  # what train.py returns, for Hydra sweepers
    resume: str | None = None  # a run dir (or "latest") to continue exactly where it stopped
    ckpt_path: str | None = None  # start a new run from this checkpoint (Lightning-style resume)
    run_dir: str = MISSING  # where everything of a run is written (Hydra's output dir)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    figure: FigureConfig = field(default_factory=FigureConfig)
    steps_to_echo: StepsToEchoConfig = field(default_factory=StepsToEchoConfig)
    logger: Any = None  # `_target_` nodes, instantiated by Hydra
    callbacks: Any = None


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from echo_lstm.checkpointing import resume_dir

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("resume_dir"):
        from echo_lstm.preflight import sweep_job_name

        OmegaConf.register_new_resolver("resume_dir", resume_dir)
        OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name)
        OmegaConf.register_new_resolver(
            "resume_subdir", lambda resume, now: ".hydra" if resume is None else f".hydra/resumed-{now}"
        )
    require_optional_plugins(sys.argv[1:])


# Optional Hydra plugins: (override prefixes that select it, its module, how to install it).
OPTIONAL_PLUGINS = [
    (("hparams_search=optuna", "hydra/sweeper=optuna"), "hydra_plugins.hydra_optuna_sweeper",
     'pip install -e ".[optuna]"  (the Optuna sweeper, hydra-optuna-sweeper)'),
]


def require_optional_plugins(argv: list[str]) -> None:
    """Exit with one clear line when an override selects an optional plugin that is not installed
    (Hydra's own message would only list the installed options)."""
    import importlib.util

    for prefixes, module, install in OPTIONAL_PLUGINS:
        selected = [a for a in argv if a.lstrip("+~").startswith(prefixes)]
        if selected and importlib.util.find_spec(module) is None:
            print(f"error: {selected[0]} needs an optional plugin that is not installed: {install}",
                  file=sys.stderr)
            sys.exit(2)


CELLS = ("lstm", "gru", "rnn")
METRICS = ("val/boundary_acc", "val/acc", "val/loss", "val/min_acc", "train/steps_to_echo", "train/boundary_acc",
           "train/acc", "train/loss")
OPTIMIZERS = ("adagrad", "adam", "sgd")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def validate(cfg: Any) -> list[str]:
    """Check every value; raise ConfigError on the first bad one, return warnings for odd-but-legal ones."""
    d, m, o, dev, t = cfg.data, cfg.model, cfg.optimizer, cfg.device, cfg.trainer
    _require(cfg.layers >= 1, "layers", cfg.layers, "must be an integer >= 1")
    _require(m.state_size >= 1, "model.state_size", m.state_size, "must be an integer >= 1")
    _require(m.cell in CELLS, "model.cell", m.cell, f"must be one of {', '.join(CELLS)}")
    _require(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must be in [0, 1)")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be an integer >= 1 (number of streams)")
    T = d.truncated_backprop_length
    _require(T >= 1, "data.truncated_backprop_length", T, "must be an integer >= 1")
    _require(d.echo_step >= 0, "data.echo_step", d.echo_step, "must be an integer >= 0")
    _require(
        d.total_series_length // d.batch_size >= T,
        "data.total_series_length",
        d.total_series_length,
        f"too short: needs at least batch_size * truncated_backprop_length = {d.batch_size * T} "
        "for one chunk per stream",
    )
    _require(
        d.val_series_length // d.batch_size >= T,
        "data.val_series_length",
        d.val_series_length,
        f"too short: needs at least batch_size * truncated_backprop_length = {d.batch_size * T}",
    )
    _require(d.chunks_per_batch >= 1, "data.chunks_per_batch", d.chunks_per_batch, "must be an integer >= 1")
    _require(o.name in OPTIMIZERS, "optimizer.name", o.name, f"must be one of {', '.join(OPTIMIZERS)}")
    _require(o.lr > 0, "optimizer.lr", o.lr, "must be > 0")
    _require(
        o.initial_accumulator_value >= 0,
        "optimizer.initial_accumulator_value",
        o.initial_accumulator_value,
        "must be >= 0",
    )
    _require(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "must be >= 0")
    _require(0 <= o.momentum < 1, "optimizer.momentum", o.momentum, "must be in [0, 1)")
    _require(o.eps > 0, "optimizer.eps", o.eps, "must be > 0")
    _require(0 < cfg.target_acc <= 1, "target_acc", cfg.target_acc, "must be in (0, 1]")
    _require(cfg.optimized_metric in METRICS, "optimized_metric", cfg.optimized_metric,
             f"must be one of the logged metrics: {', '.join(METRICS)}")
    _require(cfg.threads >= 0, "threads", cfg.threads, "must be >= 0 (0 = torch's default)")
    _require(t.max_epochs >= 1 or t.max_epochs == -1, "trainer.max_epochs", t.max_epochs, "must be >= 1 or -1")
    _require(t.max_steps >= 1 or t.max_steps == -1, "trainer.max_steps", t.max_steps, "must be >= 1 or -1")
    _require(t.val_check_interval >= 1, "trainer.val_check_interval", t.val_check_interval,
             "must be an integer >= 1 (training batches between validations)")
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "must be >= 1")
    _require(cfg.checkpoint.every_n_steps >= 0, "checkpoint.every_n_steps", cfg.checkpoint.every_n_steps,
             "must be >= 0 (0 = only at validation and at the end)")
    f = cfg.figure
    _require(f.every_n_steps >= 0, "figure.every_n_steps", f.every_n_steps, "must be >= 0 (0 = no figure)")
    _require(f.streams >= 1, "figure.streams", f.streams, "must be an integer >= 1")
    _require(f.width >= 100, "figure.width", f.width, "must be >= 100 (pixels)")
    _require(f.height >= 100, "figure.height", f.height, "must be >= 100 (pixels)")
    _require(cfg.steps_to_echo.window >= 1, "steps_to_echo.window", cfg.steps_to_echo.window,
             "must be an integer >= 1 (chunks)")
    _require(dev.accelerator in ACCELERATORS, "device.accelerator", dev.accelerator,
             f"must be one of {', '.join(ACCELERATORS)}")
    devices = dev.devices
    _require(devices == "auto" or (isinstance(devices, int) and devices >= 1), "device.devices", devices,
             "must be an integer >= 1 or 'auto'")
    _require(dev.num_nodes >= 1, "device.num_nodes", dev.num_nodes, "must be an integer >= 1")
    _require(str(dev.precision) in PRECISIONS, "device.precision", dev.precision,
             f"must be one of {', '.join(PRECISIONS)}")
    if isinstance(devices, int):
        world = devices * dev.num_nodes
        _require(
            d.batch_size % world == 0,
            "data.batch_size",
            d.batch_size,
            f"must be divisible by the number of processes ({world} = device.devices * device.num_nodes): "
            "each process owns a fixed set of streams",
        )
    warnings = []
    batches = -(-(d.total_series_length // d.batch_size // T) // d.chunks_per_batch)
    if t.val_check_interval > batches:
        warnings.append(
            f"trainer.val_check_interval={t.val_check_interval} is more than the {batches} training batch(es) "
            "of an epoch: validating once per epoch instead"
        )
    if d.echo_step >= T:
        warnings.append(
            f"data.echo_step={d.echo_step} >= data.truncated_backprop_length={T}: every target lies in an "
            "earlier chunk, so only the carried state can learn it (harder, but allowed)"
        )
    return warnings
