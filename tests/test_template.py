"""lightning-hydra-template's own test suite (github.com/ashleve/lightning-hydra-template, tests/), ported to this
project in one file: conftest.py's config fixtures, test_configs.py, test_datamodules.py, test_train.py,
test_eval.py and test_sweeps.py, each test with its intent and structure and this project's names:

  template                                   here
  configs/train.yaml, configs/eval.yaml      conf/train.yaml, conf/eval.yaml (register_configs() first)
  cfg.paths.output_dir                       cfg.run_dir
  src.train.train(cfg)                       what train.py's task does: config.validate(cfg), training.train(cfg)
  src.eval.evaluate(cfg)                     echo_lstm.machinery.evaluation.evaluate(cfg)
  MNISTDataModule                            echo_lstm.data.EchoDataModule, built from cfg.data
  trainer.accelerator / devices / strategy   the device group: device=cpu | gpu | ddp_cpu
  trainer=ddp_sim (ddp_spawn on 2 CPUs)      device=ddp_cpu (real DDP, gloo) with data.batch_size=4
  ckpt_path=<last.ckpt> (resume)             resume=<run dir>
  epoch_000.ckpt                             best-step<N>.ckpt (ModelCheckpoint, save_top_k=1) and last.ckpt
  model.optimizer.lr=0.005,0.01              layers=1,2 (a plain value sweep)
  hparams_search=mnist_optuna                hparams_search=optuna
  RunIf(min_gpus=1) / RunIf(sh=True)         skipif(no CUDA) / subprocess (no `sh` needed)

The in-process fixtures keep runs tiny with this project's integer sizes (a 1500-bit series, 4 chunks per
training batch), not with the template's fractional `limit_*_batches`: what the template's spellings
(`trainer=gpu`, `trainer.limit_train_batches=0.01`, `seed=null`, `+trainer.limit_...`) do when typed at
`python train.py` is checked separately (test_template_spelling_*): either a run that works or exactly one
`error:` line, exit code 2, no traceback; for a `trainer=` group, a line that says what to type instead.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
from pathlib import Path

import hydra
import pytest
import torch
from conftest import REPO, assert_refused, run_script, run_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [GPUs>=1]")  # the template's RunIf
OPTUNA = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                            reason="Requires: [hydra-optuna-sweeper] (pip install -e '.[optuna]')")
WANDB = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="Requires: [wandb]")

# The template's "set defaults for all tests", as this project keeps a run tiny: 1500 bits in 5 streams, i.e. 300
# steps per stream, 20 chunks of 15 per epoch in 5 training batches of 4 chunks; 60 validation steps per stream.
TINY = [
    "data.total_series_length=1500",
    "data.val_series_length=300",
    "data.chunks_per_batch=4",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "figure.every_n_steps=0",
]
CHUNKS_PER_EPOCH = 20
DDP = ["device=ddp_cpu", "data.batch_size=4"]  # 4 streams: 2 per process (1500 // 4 = 375 steps: 25 chunks)


def compose_app(config_name: str, overrides: list[str]) -> DictConfig:
    """conf/<config_name>.yaml composed as the app composes it, with Hydra's node (return_hydra_config=True)."""
    from echo_lstm.machinery.config import register_configs
    from echo_lstm.machinery.evaluation import register_configs as register_eval_configs

    register_configs()
    register_eval_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=config_name, return_hydra_config=True, overrides=overrides)


def train_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The template's cfg_train for this project: tiny, on the CPU, no logger, its run dir under tmp_path."""
    cfg = compose_app("train", ["device=cpu", "logger=none", *TINY, *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
    return cfg


def run_task(cfg: DictConfig, callbacks: list | None = None):
    """What train.py's Hydra task does with the composed config, in this process: check it, then train."""
    from echo_lstm.machinery.config import validate
    from echo_lstm.training import train

    validate(cfg)
    return train(cfg, callbacks)


# ------------------------------------------------------------------------------------------------ conftest.py
@pytest.fixture(scope="module")
def cfg_train_global(tmp_path_factory) -> DictConfig:
    return train_cfg(tmp_path_factory.mktemp("unused-run-dir"))


@pytest.fixture(scope="module")
def cfg_eval_global() -> DictConfig:
    return compose_app("eval", ["ckpt_path=.", "length=1500"])


@pytest.fixture
def cfg_train(cfg_train_global: DictConfig, tmp_path: Path) -> DictConfig:
    cfg = cfg_train_global.copy()
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
    yield cfg
    GlobalHydra.instance().clear()


@pytest.fixture
def cfg_eval(cfg_eval_global: DictConfig, tmp_path: Path) -> DictConfig:
    cfg = cfg_eval_global.copy()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    yield cfg
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------------------------------------ test_configs.py
@pytest.mark.parametrize("part", ["data", "model", "trainer"])
def test_train_config(cfg_train: DictConfig, part: str) -> None:
    """The training config's data, model and trainer each instantiate on their own, as Lightning objects. (The
    template instantiates the three in one test; one test per part here, so that each one's failure shows.)"""
    import pytorch_lightning as pl

    from echo_lstm.data import EchoDataModule
    from echo_lstm.models.module import EchoLSTM

    assert cfg_train
    assert cfg_train.data
    assert cfg_train.model
    assert cfg_train.trainer

    HydraConfig().set_config(cfg_train)

    built = hydra.utils.instantiate(cfg_train[part])
    expected = {"data": (pl.LightningDataModule, EchoDataModule), "model": (pl.LightningModule, EchoLSTM),
                "trainer": (pl.Trainer, pl.Trainer)}[part]
    assert all(isinstance(built, cls) for cls in expected), f"instantiate(cfg.{part}) gave a {type(built)}"


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(tmp_path: Path, group: str) -> None:
    """The template's `instantiate_callbacks` / `instantiate_loggers`: each node of the group builds its Lightning
    object with `hydra.utils.instantiate` (default callbacks; the TensorBoard and CSV loggers)."""
    import pytorch_lightning as pl

    option = {"callbacks": "default", "logger": "many_loggers"}[group]
    cfg = train_cfg(tmp_path, f"{group}={option}")
    HydraConfig().set_config(cfg)
    built = [hydra.utils.instantiate(node) for node in cfg[group].values() if node is not None]
    kind = {"callbacks": pl.Callback, "logger": pl.loggers.Logger}[group]
    assert len(built) >= 2 and all(isinstance(b, kind) for b in built), built


def test_eval_config(cfg_eval: DictConfig, tmp_path: Path) -> None:
    """The evaluation config composes and passes its checks. (This project's eval.yaml has no data, model or
    trainer: the network, echo_step and chunk length come from the checkpoint; the device is its group.)"""
    from echo_lstm.machinery.evaluation import check_settings

    assert cfg_eval
    assert cfg_eval.ckpt_path
    assert cfg_eval.device
    assert cfg_eval.streams and cfg_eval.length

    HydraConfig().set_config(cfg_eval)

    (tmp_path / "last.ckpt").write_bytes(b"")  # check_settings looks for the file only; evaluate() reads it
    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(tmp_path / "last.ckpt")
    check_settings(cfg_eval)


# ------------------------------------------------------------------------------------------- test_datamodules.py
@pytest.mark.parametrize("batch_size", [2, 5])
def test_echo_datamodule(tmp_path: Path, batch_size: int) -> None:
    """EchoDataModule from cfg.data: prepare_data(), setup() with no stage, both loaders non-empty, and a training
    batch of `chunks_per_batch` chunks of `batch_size` streams of T steps, with int64 targets."""
    cfg = train_cfg(tmp_path, f"data.batch_size={batch_size}")
    d = cfg.data

    dm = hydra.utils.instantiate(d)
    dm.prepare_data()
    dm.setup()
    assert dm.train_dataloader() and dm.val_dataloader()
    assert len(dm.train_dataloader()) > 0 and len(dm.val_dataloader()) > 0

    blocks = list(dm.train_dataloader())
    chunks = d.total_series_length // batch_size // d.truncated_backprop_length
    assert sum(len(b["x"]) for b in blocks) == chunks  # every chunk of the epoch, once
    num_datapoints = sum(b["x"].numel() for b in blocks)
    assert num_datapoints == chunks * d.truncated_backprop_length * batch_size

    batch = next(iter(dm.train_dataloader()))
    x, y = batch["x"], batch["y"]
    assert x.shape == y.shape == (d.chunks_per_batch, batch_size, d.truncated_backprop_length)
    assert y.dtype == torch.int64
    assert not x.is_floating_point()  # bits, as the model takes them

    val = next(iter(dm.val_dataloader()))
    assert val["x"].shape[0] == batch_size and val["x"].shape == val["y"].shape


# ------------------------------------------------------------------------------------------------ test_train.py
def test_train_fast_dev_run(cfg_train: DictConfig) -> None:
    """Run for 1 train and val step."""
    HydraConfig().set_config(cfg_train)
    with open_dict(cfg_train):
        cfg_train.trainer.fast_dev_run = True
    run_task(cfg_train)


@CUDA
def test_train_fast_dev_run_gpu(tmp_path: Path) -> None:
    """Run for 1 train and val step on GPU (the template sets trainer.accelerator=gpu: here device=gpu)."""
    cfg = train_cfg(tmp_path, "device=gpu")
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    run_task(cfg)


@CUDA
@pytest.mark.slow
def test_train_epoch_gpu_amp(tmp_path: Path) -> None:
    """Train 1 epoch on GPU with mixed precision (the template's precision=16)."""
    cfg = train_cfg(tmp_path, "device=gpu", "device.precision=16-mixed")
    HydraConfig().set_config(cfg)
    result = run_task(cfg)
    assert result.step == CHUNKS_PER_EPOCH


@pytest.mark.slow
def test_train_epoch_double_val_loop(cfg_train: DictConfig) -> None:
    """Train 1 epoch with the validation loop twice per epoch. (The template's val_check_interval=0.5; here the
    interval is in training batches: 5 per epoch, so every 2. `trainer.val_check_interval=0.5` as typed:
    test_template_spelling_of_limits.)"""
    import pytorch_lightning as pl

    class CountValidations(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.steps.append(trainer.global_step)

    HydraConfig().set_config(cfg_train)
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 1
        cfg_train.trainer.val_check_interval = 2
    counter = CountValidations()
    run_task(cfg_train, callbacks=[counter])
    assert len(set(counter.steps)) >= 2, counter.steps  # at least two within the epoch (and maybe a final one)


@pytest.mark.slow
def test_train_ddp_sim(tmp_path: Path, ok) -> None:
    """DDP on 2 CPU processes for 2 epochs (the template's ddp_spawn in-process; here device=ddp_cpu, whose
    ranks run train.py, so it runs as a user runs it)."""
    run_dir = tmp_path / "run"
    ok(run_train(*TINY, *DDP, "trainer.max_epochs=2", run_dir=run_dir))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 25  # 25 chunks per epoch of 4 streams, all gathered from both ranks
    assert ckpt["echo_train_state"].shape[2] == 4


@pytest.mark.slow
def test_train_resume(tmp_path: Path, ok) -> None:
    """Run 1 epoch, finish, and resume for another epoch: resume=<run dir> (README, "resume")."""
    run_dir = tmp_path / "run"
    ok(run_train(*TINY, "trainer.max_epochs=1", run_dir=run_dir))

    files = os.listdir(run_dir / "checkpoints")
    assert "last.ckpt" in files
    assert len([f for f in files if f.startswith("best")]) == 1  # the template's epoch_000.ckpt
    first = json.loads((run_dir / "result.json").read_text())
    assert first["step"] == CHUNKS_PER_EPOCH

    proc = ok(run_train(f"resume={run_dir}", "trainer.max_epochs=2"))
    assert f"from step {CHUNKS_PER_EPOCH}" in proc.stdout, proc.stdout  # "continuing <run dir> from step 20 ..."

    files = os.listdir(run_dir / "checkpoints")
    assert "last.ckpt" in files
    assert len([f for f in files if f.startswith("best")]) == 1  # save_top_k=1: still one best (no epoch_002)
    second = json.loads((run_dir / "result.json").read_text())
    assert second["step"] == 2 * CHUNKS_PER_EPOCH and second["epoch"] == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * CHUNKS_PER_EPOCH
    # (The template also asserts that train/acc and val/acc grew: an epoch of 20 chunks learns nothing reliably;
    # what training learns is test_learning.py's, under its `learning` marker.)


# ------------------------------------------------------------------------------------------------- test_eval.py
@pytest.mark.slow
def test_train_eval(tmp_path: Path, cfg_train: DictConfig, cfg_eval: DictConfig, ok) -> None:
    """Train 1 epoch, then evaluate its last.ckpt in-process and with eval.py: the same numbers."""
    from echo_lstm.machinery.evaluation import evaluate

    assert str(tmp_path) == cfg_train.run_dir

    HydraConfig().set_config(cfg_train)
    result = run_task(cfg_train)

    assert "last.ckpt" in os.listdir(tmp_path / "checkpoints")

    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")

    HydraConfig().set_config(cfg_eval)
    metrics = evaluate(cfg_eval)

    assert metrics["acc"] > 0.0
    assert metrics["trained_step"] == result.step == CHUNKS_PER_EPOCH
    assert metrics["seed"] == cfg_train.seed + 1  # fresh series: the training seed + 1

    out = tmp_path / "eval"
    ok(run_script("eval.py", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", "length=1500",
                  f"hydra.run.dir={out}"))
    written = json.loads((out / "eval.json").read_text())
    assert abs(written["acc"] - metrics["acc"]) < 0.001
    assert written["trained_step"] == metrics["trained_step"]


# ----------------------------------------------------------------------------------------------- test_sweeps.py
FAST_DEV_RUN = ["++trainer.fast_dev_run=true"]  # the template's spelling


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))


@pytest.mark.slow
def test_experiments(tmp_path: Path, ok) -> None:
    """Every experiment config, one job each of a multirun, with fast_dev_run and a tiny series."""
    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    # tbptt_horizon's 64 streams and long series: back to the tiny series of 5 streams of chunks of 15
    small = [*TINY, "data.batch_size=5", "data.truncated_backprop_length=15", "data.echo_step=3"]
    ok(run_train("experiment=glob(*)", f"hydra.sweep.dir={tmp_path}", *FAST_DEV_RUN, *small, multirun=True))
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == len(experiments), jobs
    assert len(sweep_rows(tmp_path)) == len(experiments)


@pytest.mark.slow
def test_hydra_sweep(tmp_path: Path, ok) -> None:
    """The default Hydra sweep (basic launcher), with fast_dev_run."""
    ok(run_train(f"hydra.sweep.dir={tmp_path}", "layers=1,2", *FAST_DEV_RUN, *TINY, multirun=True))
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_layers=1", "1_layers=2"]
    assert len(sweep_rows(tmp_path)) == 2


@pytest.mark.slow
def test_hydra_sweep_ddp_sim(tmp_path: Path, ok) -> None:
    """The default Hydra sweep of DDP jobs on 2 CPU processes each (the template's trainer=ddp_sim)."""
    ok(run_train(f"hydra.sweep.dir={tmp_path}", *DDP, *TINY, "trainer.max_epochs=2", "layers=1,2", multirun=True))
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0_layers=1", "1_layers=2"]
    for job in jobs:
        assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 25


@OPTUNA
@pytest.mark.slow
def test_optuna_sweep(tmp_path: Path, ok) -> None:
    """Optuna hyperparameter search, a few trials of fast_dev_run."""
    ok(run_train("hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.sampler.n_startup_trials=2", *FAST_DEV_RUN, *TINY, multirun=True))
    assert (tmp_path / "optimization_results.yaml").is_file()
    assert len(sweep_rows(tmp_path)) == 4


@WANDB
@OPTUNA
@pytest.mark.slow
def test_optuna_sweep_ddp_sim_wandb(tmp_path: Path, ok) -> None:
    """Optuna search of DDP jobs (2 CPU processes each) logging to Weights & Biases (offline)."""
    ok(run_train("hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=2",
                 *DDP, *TINY, "trainer.max_epochs=2", "logger=wandb", multirun=True,
                 env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}))
    assert (tmp_path / "optimization_results.yaml").is_file()


# ------------------------------------------------------------------- the template's spellings at `python train.py`
# The template's trainer group, typed here: a run that works, or one line that names the device option to type.
TRAINER_GROUPS = {
    "trainer=cpu": "device=cpu",
    "trainer=gpu": "device=gpu",
    "trainer=ddp": "device=",  # device=ddp_cpu or device=multi_gpu
    "trainer=ddp_sim": "device=ddp_cpu",
    "trainer.accelerator=gpu": "device",
    "trainer.devices=2": "device",
    "trainer.strategy=ddp_spawn": "device",
}


@pytest.mark.slow
@pytest.mark.parametrize("override", list(TRAINER_GROUPS))
def test_template_spelling_of_the_trainer_group(tmp_path: Path, override: str) -> None:
    # data.batch_size=4: if the spelling runs as DDP on 2 processes, the streams split evenly.
    proc = run_train(*TINY, "data.batch_size=4", override, run_dir=tmp_path / "run", timeout=300)
    if proc.returncode == 0:
        assert "Traceback" not in proc.stdout + proc.stderr
        assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
        return
    line = assert_refused(proc, code=2)
    assert TRAINER_GROUPS[override] in line.removeprefix(f"error: {override}"), line  # what to type instead


# The template's fractional limits (its conftest, test_train_epoch_double_val_loop, test_sweeps), its `+` on
# trainer keys its trainer config lacks, its `++`, and its default seed=null: each runs, or is one error line.
LIMITS = [
    ["trainer.limit_train_batches=0.01"],
    ["trainer.limit_val_batches=0.1"],
    ["trainer.limit_test_batches=0.1"],
    ["trainer.limit_train_batches=0.01", "trainer.limit_val_batches=0.1", "trainer.limit_test_batches=0.1"],
    ["trainer.val_check_interval=0.5"],
    ["+trainer.limit_train_batches=0.01", "+trainer.limit_val_batches=0.1", "+trainer.limit_test_batches=0.1"],
    ["++trainer.fast_dev_run=true"],
    ["seed=null"],
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", LIMITS, ids=[" ".join(o) for o in LIMITS])
def test_template_spelling_of_limits(tmp_path: Path, overrides: list[str]) -> None:
    proc = run_train(*TINY, *overrides, run_dir=tmp_path / "run", timeout=300)
    if proc.returncode == 0:
        assert "Traceback" not in proc.stdout + proc.stderr
        return
    assert_refused(proc, code=2)


@pytest.mark.slow
def test_template_spelling_of_limits_in_a_ddp_sweep(tmp_path: Path) -> None:
    """test_hydra_sweep_ddp_sim's command as the template writes it (with this project's device and names): the
    sweep runs, or it is one error line before any job starts."""
    proc = run_train(f"hydra.sweep.dir={tmp_path / 'sweep'}", *DDP, *TINY, "trainer.max_epochs=3",
                     "+trainer.limit_train_batches=0.01", "+trainer.limit_val_batches=0.1",
                     "+trainer.limit_test_batches=0.1", "layers=1,2", multirun=True, timeout=300)
    if proc.returncode == 0:
        assert "Traceback" not in proc.stdout + proc.stderr
        return
    assert_refused(proc, code=2)
