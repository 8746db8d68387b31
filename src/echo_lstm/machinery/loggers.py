"""The run's loggers (`conf/logger/`: one `_target_` node each) and the experiment's hyperparameters."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_lstm.machinery.errors import ConfigError, Raw

# Packages that optional loggers need, and how to install them.
OPTIONAL = {
    "pytorch_lightning.loggers.WandbLogger": ("wandb", 'pip install -e ".[wandb]"'),
    "pytorch_lightning.loggers.MLFlowLogger": ("mlflow", 'pip install -e ".[mlflow]"'),
}
# What defines the experiment (the HParams tab, hparams.yaml); the rest is how it runs (plumbing).
EXPERIMENT_KEYS = ("layers", "seed", "target_acc", "model.net", "model.carry_state", "data", "optimizer",
                   "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm")
PLUMBING = ("data._target_", "data.chunks_per_batch", "data.seed", "model.net.layers", "optimizer._partial_")


def check_available(cfg: DictConfig) -> None:
    """Refuse, with what to install, a logger whose package is missing (before any run dir is made)."""
    for name, node in (cfg.logger or {}).items():
        target = OmegaConf.select(node, "_target_") if node is not None else None
        if target in OPTIONAL and importlib.util.find_spec(OPTIONAL[target][0]) is None:
            package, install = OPTIONAL[target]
            raise ConfigError("logger", Raw(name), f"needs the {package} package, which is not installed: {install}")


def build_loggers(cfg: DictConfig, **tensorboard_kwargs: Any) -> list[Any]:
    from hydra.utils import instantiate

    loggers = []
    for node in (cfg.logger or {}).values():
        if node is None:
            continue
        is_tb = OmegaConf.select(node, "_target_", default="").endswith("TensorBoardLogger")
        if str(OmegaConf.select(node, "tracking_uri", default="")).startswith("file:"):
            # MLflow 3 refuses its local file store ("maintenance mode") unless asked for it; the run dir's
            # mlruns/ is this app's offline default (conf/logger/mlflow.yaml), so ask, unless the user decided.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        loggers.append(instantiate(node, **(tensorboard_kwargs if is_tb else {})))
    return loggers


def experiment_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings that define the experiment, flat (`model.net.state_size` -> 4)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif prefix not in PLUMBING:
            out[prefix] = node if isinstance(node, (bool, int, float, str)) else str(node)

    for key in EXPERIMENT_KEYS:
        value = OmegaConf.select(cfg, key)
        walk(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value, key)
    return out


def overridden(params: dict[str, Any], overrides: list[str]) -> list[str]:
    """The hyperparameters that `overrides` set: `layers=3` -> layers, `optimizer=sgd` -> every optimizer.*."""
    from echo_lstm.machinery.sweeps.naming import split_override

    keys = {split_override(o)[0] for o in overrides}
    return [k for k in params if any(k == key or k.startswith(key + ".") for key in keys)]


def log_hparams(loggers: list[Any], cfg: DictConfig, metrics: tuple[str, ...]) -> None:
    """Every logger gets the experiment's hyperparameters (TensorBoard and CSV also in the run dir's hparams.yaml).

    TensorBoard's HParams tab also gets the metrics, written directly so that no placeholder values enter the real
    curves. The tab shows 5 hyperparameters at first: those marked `differs`, then the others by name (`data.*`
    first); the keys the command line set (Hydra's task overrides) are put first and marked, so a sweep's table
    leads with what its runs vary."""
    from hydra.core.hydra_config import HydraConfig
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    params = experiment_hparams(cfg)
    first = overridden(params, list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [])
    experiment, start, end = hparams({**{k: params[k] for k in first}, **params}, {m: float("nan") for m in metrics})
    data = HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in first
    experiment.value[0].metadata.plugin_data.content = data.SerializeToString()
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, TensorBoardLogger):
            for summary in (experiment, start, end):
                logger.experiment.file_writer.add_summary(summary)
