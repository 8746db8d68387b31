"""The Lightning and Hydra habits users bring: every Trainer argument, the debug / logger / callbacks / optimizer
groups, one optimizer added with one YAML file."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import TINY, assert_refused, compose, run_train, scalars

from echo_lstm.training import train


def fit(tmp_path, *overrides: str):
    return train(compose(*TINY, "figure.every_n_steps=0", *overrides, run_dir=tmp_path))


# ---------------------------------------------------------------------------------------------- Trainer arguments
def test_fast_dev_run_trains_one_batch_and_validates_once(tmp_path):
    result = fit(tmp_path, "trainer.fast_dev_run=true")
    assert result.step == 4 and result.stop_reason == "trainer.fast_dev_run"  # one block of 4 chunks
    assert "val/acc" in result.metrics
    assert not (tmp_path / "checkpoints").exists()  # Lightning's fast_dev_run writes no checkpoints


def test_limit_train_batches_and_deterministic_and_the_simple_profiler(tmp_path):
    result = fit(tmp_path, "trainer.limit_train_batches=2", "trainer.deterministic=true", "trainer.profiler=simple")
    assert result.step == 2 * 2 * 4  # 2 epochs of 2 batches of 4 chunks


def test_overfit_batches_trains_on_the_same_blocks_every_epoch(tmp_path):
    from types import SimpleNamespace

    from echo_lstm.data import EchoDataModule

    dm = EchoDataModule(600, 2, 5, 3, 4, 100, 1)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, overfit_batches=2, current_epoch=3,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert torch.equal(dm.make_epoch(3)[0], dm.make_epoch(0)[0])  # epoch 3 = epoch 0's series
    result = fit(tmp_path, "trainer.overfit_batches=2", "trainer.max_epochs=3")
    assert result.step == 3 * 2 * 4


def test_gradient_clipping_by_value_changes_the_weights(tmp_path):
    plain = fit(tmp_path / "plain", "trainer.max_epochs=1")
    clipped = fit(tmp_path / "clipped", "trainer.max_epochs=1", "trainer.gradient_clip_val=0.001",
                  "trainer.gradient_clip_algorithm=value")
    a = torch.load(plain.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(clipped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # With value clipping at 0.001 and Adagrad's normalised step, no weight moves more than lr per step.
    assert clipped.step == 60


# ---------------------------------------------------------------------------------------------- config groups
@pytest.mark.parametrize("option", ["default", "fdr", "limit", "overfit", "profiler"])
def test_debug_options_run(tmp_path, option):
    cfg = compose(f"debug={option}", *TINY, run_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("outputs/debug/")  # away from outputs/runs (resume=latest ignores it)
    assert cfg.trainer.detect_anomaly is True and cfg.device.accelerator == "cpu"
    del cfg.hydra
    result = train(cfg)
    assert result.step > 0


@pytest.mark.parametrize("option", ["tensorboard", "csv", "many_loggers", "none"])
def test_logger_options(tmp_path, option):
    result = fit(tmp_path, f"logger={option}", "trainer.max_epochs=1")
    has_tb = bool(list(tmp_path.glob("events.out.tfevents.*")))
    has_csv = (tmp_path / "metrics.csv").is_file()
    assert (has_tb, has_csv) == {"tensorboard": (True, False), "csv": (False, True), "many_loggers": (True, True),
                                 "none": (False, False)}[option]
    assert result.metrics["val/acc"] > 0  # the results come from the run, not from a logger's files
    if has_csv:
        assert "val/boundary_acc" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    if option != "none":
        assert "model.net.state_size: 4" in (tmp_path / "hparams.yaml").read_text()


@pytest.mark.parametrize("option,package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_optional_loggers_say_what_to_install(tmp_path, option, package):
    if importlib.util.find_spec(package) is not None:
        result = fit(tmp_path, f"logger={option}", "trainer.max_epochs=1")  # offline
        assert result.step == 60
        return
    assert_refused(run_train(f"logger={option}", run_dir=tmp_path / "run"),
                   f"logger={option} is invalid: needs the {package} package", f'pip install -e ".[{package}]"')
    assert not (tmp_path / "run").exists()


def test_callbacks_none_is_a_bare_run(tmp_path):
    result = fit(tmp_path, "callbacks=none", "trainer.max_epochs=1")
    assert result.step == 60 and not (tmp_path / "checkpoints").exists()  # nor Lightning's default checkpoint
    assert "val/acc" in result.metrics


def test_a_new_optimizer_is_one_yaml_file_even_in_the_users_own_config_dir(tmp_path, ok):
    cfg = compose("optimizer=rmsprop")
    assert cfg.optimizer._target_ == "torch.optim.RMSprop"
    mine = tmp_path / "myconf" / "optimizer"
    mine.mkdir(parents=True)
    (mine / "asgd.yaml").write_text("_target_: torch.optim.ASGD\n_partial_: true\nlr: 0.05\n")
    run_dir = tmp_path / "run"
    ok(run_train(f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "optimizer=asgd", *TINY, run_dir=run_dir))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(iter(ckpt["optimizer_states"][0]["state"].values()))
    assert {"eta", "mu", "ax"} <= set(state)  # ASGD's own state: the optimizer really is ASGD
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05
    assert scalars(run_dir)["train/loss"]


@pytest.mark.parametrize("logger,view", [("tensorboard", True), ("csv", False), ("none", False)])
def test_the_summary_offers_tensorboard_only_when_it_has_event_files(tmp_path, logger, view):
    from echo_lstm.machinery.run import summary_lines

    cfg = compose(*TINY, "figure.every_n_steps=0", "trainer.max_epochs=1", f"logger={logger}", run_dir=tmp_path)
    lines = summary_lines(train(cfg), cfg)
    assert any(line.startswith("  view: tensorboard --logdir") for line in lines) is view, lines
