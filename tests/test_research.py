"""The research workflow: experiments, train/steps_to_echo, the figure, sweeps and their summary, searches."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose, event_files, fake_srun, make_model, run_train, scalars

from echo_lstm.callbacks.steps_to_echo import StepsToEcho

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("tutorial_*.yaml"))
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))


# ------------------------------------------------------------------------------------------ experiments
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_trains(name, tmp_path):
    from echo_lstm.training import train

    full = compose(f"experiment={name}")  # the tutorial's settings, as a user gets them
    assert (full.data.batch_size, full.data.truncated_backprop_length, full.data.echo_step) == (5, 15, 3)
    assert full.data.total_series_length == 50000 and full.optimizer._target_ == "torch.optim.Adagrad"
    assert full.optimizer.lr == 0.3 and full.model.net.state_size == 4 and full.trainer.max_epochs == 100
    assert full.callbacks.early_stopping.stopping_threshold is None  # all 100 epochs, as the tutorial
    expected = {"tutorial_part1": ("rnn", 1, 0.0), "tutorial_part3": ("lstm", 1, 0.0),
                "tutorial_part4": ("lstm", 3, 0.0), "tutorial_part6": ("lstm", 3, 0.5)}[name]
    assert (full.model.net.cell, full.layers, full.model.net.dropout) == expected

    result = train(compose(f"experiment={name}", *TINY, "trainer.max_epochs=1", "figure.every_n_steps=0",
                           run_dir=tmp_path))
    assert result.step == 60 and result.stop_reason == "trainer.max_epochs=1"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["echo_train_state"]
    parts = 2 if expected[0] == "lstm" else 1
    assert state.shape == (expected[1], parts, 2, 4)  # [layers, parts, streams, state_size]


def test_tutorial_parity_sets_tensorflow_details():
    cfg = compose("experiment=tutorial_part4", "tutorial_parity=tensorflow")
    assert cfg.model.net.forget_bias == 1.0 and cfg.optimizer.initial_accumulator_value == 0.1
    assert compose().model.net.forget_bias == 0.0  # off by default
    model = make_model("experiment=tutorial_part4", "tutorial_parity=tensorflow")
    h = cfg.model.net.state_size
    assert torch.all(model.net.rnn.bias_ih_l0[h : 2 * h] > 0.5)  # 1.0 + a small init
    optimizer = model.configure_optimizers()
    assert all(torch.all(s["sum"] == 0.1) for s in optimizer.state.values())


# ------------------------------------------------------------------------------------------ steps to echo
def test_steps_to_echo_window_and_checkpoint_state():
    cb = StepsToEcho(target_acc=0.99, window=64)
    assert not cb.update(32, 1.0)  # window not full yet
    assert cb.update(64, 0.995)  # (1.0 + 0.995) / 2 >= 0.99
    assert cb.reached_at == 64 and cb.via == "train window"
    cb = StepsToEcho(target_acc=0.99, window=64)
    for step, acc in [(32, 0.5), (64, 0.9), (96, 1.0)]:
        assert not cb.update(step, acc)
    resumed = StepsToEcho(target_acc=0.99, window=64)
    resumed.load_state_dict(cb.state_dict())
    assert resumed.window_acc() == pytest.approx((0.9 + 1.0) / 2)  # the window survives a resume
    assert resumed.update(128, 1.0) and resumed.reached_at == 128
    again = StepsToEcho(target_acc=0.99, window=64)
    again.load_state_dict(resumed.state_dict())
    assert again.reached_at == 128 and not again.update(160, 1.0)  # reached once, kept


@pytest.mark.learning
def test_steps_to_echo_is_logged_once_at_its_step_and_smaller_for_an_easy_setting(tmp_path):
    from echo_lstm.training import train

    steps = {}
    for name, overrides in {"easy": ["layers=1"], "hard": ["layers=3"]}.items():
        run_dir = tmp_path / name
        result = train(compose(*overrides, "trainer.enable_progress_bar=false", "figure.every_n_steps=0",
                               "optimized_metric=train/steps_to_echo", run_dir=run_dir))
        steps[name] = result.value("train/steps_to_echo")
        # At its step, and at step 0 (a line in TensorBoard's chart: one point draws none).
        assert scalars(run_dir)["train/steps_to_echo"] == [(0, steps[name]), (int(steps[name]), steps[name])]
    assert math.isfinite(steps["hard"]) and steps["easy"] < steps["hard"], steps


def test_steps_to_echo_not_reached_is_inf(tmp_path):
    from echo_lstm.training import train

    result = train(compose(*TINY, "trainer.max_epochs=1", "figure.every_n_steps=0", run_dir=tmp_path))
    assert result.value("train/steps_to_echo") == math.inf and result.reached is None
    assert "train/steps_to_echo" not in scalars(tmp_path)


# ------------------------------------------------------------------------------------------ the figure
def read_images(log_dir: Path, tag: str = "echo/chunk") -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Images(tag) if tag in acc.Tags()["images"] else []


def decode(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def test_figure_at_a_steady_cadence_and_at_the_final_step(tmp_path):
    from echo_lstm.training import train

    # 60 chunks per epoch in blocks of 4, 2 epochs; a figure every 16 chunks (when a block crosses a multiple),
    # and one at the last step (120, not a multiple of 16).
    train(compose(*TINY, "figure.every_n_steps=16", "figure.width=400", "figure.height=300", run_dir=tmp_path))
    images = read_images(tmp_path)
    assert [e.step for e in images] == [16, 32, 48, 64, 80, 96, 112, 120]
    for event in images:
        image = decode(event.encoded_image_string)
        assert image.size == (400, 300) and (event.width, event.height) == (400, 300)
        colours = set(image.getdata())
        assert len(colours) > 10 and (0, 0, 255) in colours and (255, 0, 0) in colours  # bars: input, target


def test_figure_without_tensorboard_goes_to_png_files(tmp_path):
    from echo_lstm.training import train

    train(compose(*TINY, "logger=csv", "figure.every_n_steps=50", "trainer.max_epochs=1", run_dir=tmp_path))
    files = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert files == ["step_00000052.png", "step_00000060.png"]  # crossing 50 (block of 4 ends at 52); the end
    assert decode((tmp_path / "figures" / files[0]).read_bytes()).size == (800, 450)
    assert (tmp_path / "metrics.csv").is_file()


# ------------------------------------------------------------------------------------------ optional plugins
def test_missing_optuna_gives_one_clear_line(monkeypatch):
    from echo_lstm.machinery import cli
    from echo_lstm.machinery.errors import ConfigError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as error:
        cli.require_optional_plugins(["hparams_search=optuna"])
    assert error.value.line() == ('error: hparams_search=optuna is invalid: needs an optional plugin that is not '
                                  'installed: pip install -e ".[optuna]"  (the Optuna sweeper, hydra-optuna-sweeper)')
    cli.require_optional_plugins(["layers=2"])  # nothing asked, nothing checked


# ------------------------------------------------------------------------------------------ sweeps (slow)
@pytest.mark.slow
def test_multirun_jobs_get_own_runs_a_summary_and_a_picture(tmp_path, ok):
    sweep = tmp_path / "sweep"
    proc = ok(run_train("layers=1,2", *TINY, "target_acc=0.01", "callbacks.early_stopping=null",
                        f"hydra.sweep.dir={sweep}", multirun=True))
    runs = sorted({p.parent for p in event_files(sweep)})
    assert [r.name for r in runs] == ["0_layers=1", "1_layers=2"]  # TensorBoard names the runs by dir
    rows = read_summary(sweep)
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["status"] for r in rows} == {"completed"}
    for row in rows:
        logged = scalars(sweep / row["run"])
        assert float(row["val/boundary_acc"]) == pytest.approx(logged["val/boundary_acc"][-1][1], abs=1e-6)
        assert int(row["step"]) == logged["train/loss"][-1][0] == 120  # 2 epochs of 60 chunks
    # target_acc=0.01: both "learn" at once, so the accuracies tie and the fewer steps to echo rank first.
    values = [float(r["val/boundary_acc"]) for r in rows]
    steps = [float(r["train/steps_to_echo"]) for r in rows]
    assert values == sorted(values, reverse=True)
    if values[0] == values[1]:
        assert steps == sorted(steps)
    markdown = (sweep / "summary.md").read_text()
    assert "![" in markdown and "(summary.png)" in markdown
    from PIL import Image

    assert Image.open(sweep / "summary.png").size[0] >= 600
    assert "Sweep summary" in proc.stdout and "job 0 (layers=1): " in proc.stdout


def test_summary_ranks_ties_by_fewer_steps_to_echo():
    from echo_lstm.machinery.sweeps.summary import JobRecord, ranked

    def job(num: int, value: float, steps: float) -> JobRecord:
        return JobRecord(num, "completed", [f"layers={num}"], str(num), "val/boundary_acc", "maximize", 1.0,
                         value=value, metrics={"train/steps_to_echo": steps})

    order = [r.job for r in ranked([job(0, 1.0, 900), job(1, 1.0, 300), job(2, 0.9, 100), job(3, 1.0, math.inf)])]
    assert order == [1, 0, 3, 2]


@pytest.mark.slow
def test_joblib_sweep_runs_in_parallel_with_one_line_per_job_and_figures(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=0", "layers=1,2", *TINY,
                     "trainer.enable_progress_bar=true", "figure.every_n_steps=40", f"hydra.sweep.dir={sweep}",
                     multirun=True, env=fake_srun(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "loky" not in proc.stderr
    assert "srun" not in proc.stderr  # library warnings go to each job's train.log, in the workers too
    assert proc.stdout.count("job 0 (layers=1): ") == 1 and proc.stdout.count("job 1 (layers=2): ") == 1
    assert "it/s]" not in proc.stdout + proc.stderr  # no progress bars from parallel jobs
    cores = len(os.sched_getaffinity(0))
    for job in ("0_layers=1", "1_layers=2"):
        log = (sweep / job / "train.log").read_text()
        assert f"torch threads: {max(1, cores // 2)} (joblib sweep: {cores} cores / 2 parallel jobs)" in log
        assert [e.step for e in read_images(sweep / job)] == [40, 80, 120]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPTUNA, reason='the optional Optuna sweeper is not installed: pip install -e ".[optuna]"')
def test_optuna_search_runs_three_trials(tmp_path, ok):
    sweep = tmp_path / "sweep"
    ok(run_train("hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep}"))
    rows = read_summary(sweep)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    assert {"optimizer.lr", "layers", "model.net.state_size"} <= set(rows[0])
    assert (sweep / "optimization_results.yaml").is_file()


def test_the_horizon_experiment_is_a_sweep_of_echo_step_and_carry_with_a_fixed_budget(tmp_path):
    from echo_lstm.machinery.config import validate
    from echo_lstm.training import train

    cfg = compose("experiment=tbptt_horizon", return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"data.echo_step": "1,3,7,11,14,15,16,20",
                                              "model.carry_state": "true,false"}
    assert cfg.callbacks.early_stopping is None and cfg.trainer.max_steps > 0  # the same budget for every job
    assert cfg.data.truncated_backprop_length == 15
    # One job of it, shortened: it trains with its settings (64 streams, one layer of 64 units, clipping).
    job = compose("experiment=tbptt_horizon", "data.echo_step=16", "model.carry_state=false",
                  "trainer.max_steps=128", run_dir=tmp_path)
    assert validate(job) == ["data.echo_step=16 >= data.truncated_backprop_length=15: every target lies in an "
                             "earlier chunk, beyond the reach of truncated backpropagation"]
    result = train(job)
    assert result.step == 128 and result.stop_reason == "trainer.max_steps=128"
