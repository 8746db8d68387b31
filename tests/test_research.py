"""The research workflow: sweeps and their summary, train/steps_to_echo, the figure, experiments, searches."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose, event_files, run_train, scalars

from echo_lstm.research import StepsToEcho

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
OPTUNA_MISSING = 'the optional Optuna sweeper is not installed: pip install -e ".[optuna]"'
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))


def last(series: list[tuple[int, float]]) -> float:
    return series[-1][1]


# ------------------------------------------------------------------------------------------ experiments
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_trains(name, tmp_path):
    from echo_lstm.training import train

    full = compose(f"experiment={name}")  # the tutorial's settings, as a user gets them
    assert (full.data.batch_size, full.data.truncated_backprop_length, full.data.echo_step) == (5, 15, 3)
    assert full.data.total_series_length == 50000 and full.optimizer.name == "adagrad"
    assert full.optimizer.lr == 0.3 and full.model.state_size == 4 and full.trainer.max_epochs == 100
    assert full.callbacks.early_stopping.stopping_threshold is None  # all 100 epochs, as the tutorial
    expected = {"tutorial_part1": ("rnn", 1, 0.0), "tutorial_part3": ("lstm", 1, 0.0),
                "tutorial_part4": ("lstm", 3, 0.0), "tutorial_part6": ("lstm", 3, 0.5)}[name]
    assert (full.model.cell, full.layers, full.model.dropout) == expected

    cfg = compose(f"experiment={name}", *TINY, "trainer.max_epochs=1", "figure.every_n_steps=0",
                  run_dir=tmp_path)
    value = train(cfg)
    assert 0.0 <= value <= 1.0
    from echo_lstm import EchoLSTM

    model = EchoLSTM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    parts = 2 if expected[0] == "lstm" else 1
    assert model.train_state.shape == (expected[1], parts, cfg.data.batch_size, 4)


def test_tutorial_parity_sets_tensorflow_details():
    cfg = compose("experiment=tutorial_part4", "tutorial_parity=tensorflow")
    assert cfg.model.forget_bias == 1.0 and cfg.optimizer.initial_accumulator_value == 0.1
    assert compose().model.forget_bias == 0.0  # off by default
    from echo_lstm import EchoLSTM

    model = EchoLSTM(**cfg.model, optimizer=dict(cfg.optimizer))
    h = cfg.model.state_size
    assert torch.all(model.rnn.bias_ih_l0[h : 2 * h] > 0.5)  # 1.0 + a small init
    optimizer = model.configure_optimizers()
    assert all(torch.all(s["sum"] == 0.1) for s in optimizer.state.values())


@pytest.mark.parametrize("cell,parts", [("rnn", 1), ("gru", 1), ("lstm", 2)])
def test_state_shapes_per_cell(cell, parts):
    from echo_lstm import EchoLSTM

    model = EchoLSTM(layers=2, state_size=3, cell=cell)
    logits, state = model(torch.randint(0, 2, (5, 15)))
    assert logits.shape == (5, 15, 2) and state.shape == (2, parts, 5, 3)
    _, again = model(torch.randint(0, 2, (5, 15)), state)  # the packed state feeds back in
    assert again.shape == state.shape


# ------------------------------------------------------------------------------------------ steps to echo
def test_steps_to_echo_window_and_checkpoint_state():
    cb = StepsToEcho(target_acc=0.99, window=64)
    assert not cb.update(32, 1.0)  # window not full yet
    assert cb.update(64, 0.995)  # (1.0 + 0.995) / 2 >= 0.99
    assert cb.reached_at == 64 and cb.via == "train window"
    cb = StepsToEcho(target_acc=0.99, window=64)
    for step, acc in [(32, 0.5), (64, 0.9), (96, 1.0)]:
        assert not cb.update(step, acc)
    saved = cb.state_dict()
    resumed = StepsToEcho(target_acc=0.99, window=64)
    resumed.load_state_dict(saved)
    assert resumed.window_acc() == pytest.approx((0.9 + 1.0) / 2)  # the window survives a resume
    assert resumed.update(128, 1.0) and resumed.reached_at == 128
    again = StepsToEcho(target_acc=0.99, window=64)
    again.load_state_dict(resumed.state_dict())
    assert again.reached_at == 128 and not again.update(160, 1.0)  # reached once, kept


@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_steps_to_echo_survives_a_resumed_fit(tmp_path):
    """Through Lightning's checkpoint: the resumed run keeps the step reached in the first session."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from echo_lstm import EchoLSTM
    from echo_lstm.data import EchoDataModule

    def fit(max_steps: int, ckpt_path=None):
        cb = StepsToEcho(target_acc=0.01, window=8)  # reached as soon as the window is full
        trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                             callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
        dm = EchoDataModule(total_series_length=2000, batch_size=2, truncated_backprop_length=5,
                            chunks_per_batch=4, val_series_length=100)
        trainer.fit(EchoLSTM(layers=1, truncated_backprop_length=5), datamodule=dm, ckpt_path=ckpt_path)
        return cb, trainer

    first, _ = fit(12)
    assert first.reached_at == 8
    resumed, trainer = fit(24, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.reached_at == 8 and trainer.global_step == 24
    assert float(trainer.callback_metrics["train/steps_to_echo"]) == 8.0


def test_steps_to_echo_is_logged_and_smaller_for_an_easy_setting(tmp_path):
    from echo_lstm.training import train

    steps = {}
    for name, overrides in {"easy": ["layers=1"], "hard": ["layers=3"]}.items():
        run_dir = tmp_path / name
        cfg = compose(*overrides, "trainer.enable_progress_bar=false", "figure.every_n_steps=0",
                      "optimized_metric=train/steps_to_echo", run_dir=run_dir)
        steps[name] = train(cfg)  # returns the optimized metric
        logged = scalars(run_dir)["train/steps_to_echo"]
        assert logged == [(int(steps[name]), steps[name])]  # one point, at the step it names
    assert math.isfinite(steps["hard"]) and steps["easy"] < steps["hard"], steps


def test_steps_to_echo_not_reached_is_inf(tmp_path):
    from echo_lstm.training import train

    cfg = compose(*TINY, "trainer.max_epochs=1", "figure.every_n_steps=0",
                  "optimized_metric=train/steps_to_echo", run_dir=tmp_path)
    assert train(cfg) == math.inf  # learns nothing in 60 chunks: the worst value for a minimising sweeper
    assert "train/steps_to_echo" not in scalars(tmp_path)


# ------------------------------------------------------------------------------------------ the figure
def read_images(log_dir: Path, tag: str = "echo/chunk") -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Images(tag) if tag in acc.Tags()["images"] else []


def check_image(event, width: int, height: int) -> None:
    """A real figure: the size asked for, axes, bars in three colours, text."""
    from PIL import Image

    assert (event.width, event.height) == (width, height)
    image = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
    assert image.size == (width, height)
    pixels = torch.tensor(list(image.getdata()))
    assert len(torch.unique(pixels, dim=0)) > 10  # not blank
    blue, red = torch.tensor([0, 0, 255]), torch.tensor([255, 0, 0])
    assert (pixels == blue).all(1).any() and (pixels == red).all(1).any()


@pytest.mark.parametrize("background", [False, True])
def test_figure_is_written_to_tensorboard(tmp_path, background):
    import multiprocessing

    from echo_lstm.training import train

    cfg = compose(*TINY, "trainer.max_epochs=1", "figure.every_n_steps=20", "figure.width=400",
                  "figure.height=300", "figure.streams=2", f"figure.background={background}", run_dir=tmp_path)
    children = set(multiprocessing.active_children())
    train(cfg)
    images = read_images(tmp_path)
    steps = [e.step for e in images]
    if background:
        # Drawn in a worker process; a figure due while the previous one is still being drawn is skipped,
        # but the first one never is (it only waits for the worker to start), and the one in flight at the
        # end is awaited.
        assert steps[:1] == [20] and set(steps) <= {20, 40, 60} and steps == sorted(steps)
        assert set(multiprocessing.active_children()) <= children  # the worker is shut down with training
    else:
        assert steps == [20, 40, 60]  # 60 chunks, drawn each time a multiple of 20 is crossed
    for event in images:
        check_image(event, 400, 300)


def fake_trainer(log_dir: Path, **kw):
    """What EchoFigure reads of a Trainer: step, rank, loggers (a real TensorBoardLogger)."""
    from types import SimpleNamespace

    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(log_dir), name="", version="")
    return SimpleNamespace(**{"global_step": 0, "is_global_zero": True, "loggers": [logger], "max_steps": -1,
                              "current_epoch": 0, **kw})


def chunk_outputs(streams: int = 2, T: int = 5, bad: bool = False) -> dict:
    x = torch.randint(0, 2, (streams, T))
    pred = torch.randint(0, 2, (streams, T + 1 if bad else T))  # bad: a prediction of the wrong length
    return {"loss": torch.tensor(0.69), "x": x, "y": x, "pred": pred}


def batch_end(cb, trainer, step: int, **kw) -> None:
    trainer.global_step = step
    cb.on_train_batch_end(trainer, None, chunk_outputs(**kw), None, 0)


def test_figure_process_skips_while_busy_and_survives_a_failure(tmp_path, caplog):
    """The worker process: at most one figure in flight, failures logged (training goes on), all written at the
    end, the worker gone after it."""
    import multiprocessing
    import sys

    from echo_lstm.research import EchoFigure

    main_file = getattr(sys.modules["__main__"], "__file__", None)
    children = set(multiprocessing.active_children())
    trainer = fake_trainer(tmp_path)
    cb = EchoFigure(every_n_steps=20, streams=2, width=300, height=200)
    cb.on_train_start(trainer, None)
    assert cb._pool is not None and len(set(multiprocessing.active_children()) - children) == 1  # warming up
    assert getattr(sys.modules["__main__"], "__file__", None) == main_file  # hidden only while spawning
    batch_end(cb, trainer, 4)  # no figure due
    assert cb._pending is None
    batch_end(cb, trainer, 20, bad=True)  # due: handed to the worker (which is still starting)
    assert cb._pending is not None
    batch_end(cb, trainer, 40)  # due while the previous one is still being drawn: skipped
    assert cb.skipped == 1
    assert cb.wait(timeout=60)
    assert cb.failed == 1 and cb.written == 0
    assert "drawing the figure of step 20 failed" in caplog.text  # logged in the training process
    batch_end(cb, trainer, 60)  # the worker survived the failure
    cb.on_train_end(trainer, None)
    assert (cb.written, cb.skipped, cb.failed) == (1, 1, 1)
    assert cb._pool is None and set(multiprocessing.active_children()) <= children
    trainer.loggers[0].finalize("success")
    images = read_images(tmp_path)
    assert [e.step for e in images] == [60]
    check_image(images[0], 300, 200)


def test_figure_end_waits_a_bounded_time(tmp_path):
    import multiprocessing
    import time

    from echo_lstm.research import EchoFigure

    children = set(multiprocessing.active_children())
    trainer = fake_trainer(tmp_path)
    cb = EchoFigure(every_n_steps=20, streams=2, width=300, height=200, wait_s=0.05)
    cb.on_train_start(trainer, None)
    batch_end(cb, trainer, 20)  # in flight: the worker is still starting
    started = time.perf_counter()
    cb.on_exception(trainer, None, RuntimeError("boom"))
    assert time.perf_counter() - started < 5  # not the whole figure: dropped, the worker terminated
    assert cb.failed == 1 and cb.written == 0 and cb._pool is None
    assert set(multiprocessing.active_children()) <= children
    trainer.loggers[0].finalize("success")


def test_figure_only_on_rank_zero_and_when_a_figure_can_be_due(tmp_path):
    from echo_lstm.research import EchoFigure

    for kw in ({"is_global_zero": False}, {"max_steps": 19}):
        trainer = fake_trainer(tmp_path, **kw)
        cb = EchoFigure(every_n_steps=20)
        cb.on_train_start(trainer, None)
        assert cb._pool is None  # no worker process started
        batch_end(cb, trainer, 20)
        assert cb._pending is None and cb.written == 0
        cb.on_train_end(trainer, None)


def test_figure_redraw_equals_a_full_draw():
    """The drawer redraws only what changes over a saved picture of the rest (blitting): the result must be
    the picture a full matplotlib draw gives, also after the loss curve's axes have changed."""
    import numpy as np

    from echo_lstm.figure import EchoFigureDrawer

    rng = np.random.default_rng(0)
    drawer = EchoFigureDrawer(450, 300)
    for n in (5, 400):  # the second time: new bars, new loss limits and ticks, new title
        x, y, pred = (rng.integers(0, 2, (3, 7)) for _ in range(3))
        image = drawer.draw(x, y, pred, np.arange(n), np.exp(-np.arange(n) / 100), f"step {n}")
    for artist in drawer.fig.findobj(lambda a: a.get_animated()):
        artist.set_animated(False)
    drawer.canvas.draw()  # everything, the ordinary way
    full = np.asarray(drawer.canvas.buffer_rgba())[..., :3]
    assert image.shape == (300, 450, 3) and np.array_equal(image, full)


def test_figure_module_is_light_and_draws_a_png():
    """The worker imports only echo_lstm.figure: numpy and matplotlib, never torch or Lightning."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from echo_lstm import figure; figure.warm_up(300, 200, 2, 5); "
            "built = figure._drawer; x = np.ones((2, 5), dtype=np.int64); "
            "png, h, w = figure.render_png(x, x, x, np.arange(3), np.ones(3, np.float32), 300, 200); "
            "print(png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', h, w, figure._drawer is built, "
            "any(m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "200", "300", "True", "False"]  # warm_up built the drawer used


# ------------------------------------------------------------------------------------------ optional plugins
def test_missing_optuna_gives_one_clear_line(monkeypatch, capsys):
    from echo_lstm import config

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exit_:
        config.require_optional_plugins(["hparams_search=optuna"])
    assert exit_.value.code == 2
    assert 'pip install -e ".[optuna]"' in capsys.readouterr().err
    config.require_optional_plugins(["layers=2"])  # nothing asked, nothing checked


# ------------------------------------------------------------------------------------------ sweeps (slow)
@pytest.mark.slow
def test_multirun_jobs_get_own_runs_and_a_summary(tmp_path, ok):
    sweep = tmp_path / "sweep"
    proc = ok(run_train("layers=1,2", *TINY, f"hydra.sweep.dir={sweep}", multirun=True))
    runs = sorted({p.parent for p in event_files(sweep)})
    assert [r.name for r in runs] == ["0_layers=1", "1_layers=2"]  # TensorBoard names the runs by dir
    assert all(r.parent == sweep for r in runs)  # events directly in each job dir
    rows = read_summary(sweep)
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert {r["layers"] for r in rows} == {"1", "2"} and {r["status"] for r in rows} == {"completed"}
    values = [float(r["val/boundary_acc"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first (the optimized metric is maximised)
    for row in rows:
        logged = scalars(sweep / row["run"])
        assert float(row["val/boundary_acc"]) == pytest.approx(last(logged["val/boundary_acc"]), abs=1e-6)
        assert float(row["train/loss"]) == pytest.approx(last(logged["train/loss"]), abs=1e-6)
        assert int(row["step"]) == logged["train/loss"][-1][0] == 120  # 2 epochs of 60 chunks
    markdown = (sweep / "summary.md").read_text()
    assert "0_layers=1" in markdown and "1_layers=2" in markdown
    assert "Sweep summary" in proc.stdout and "| layers" in proc.stdout


@pytest.mark.slow
def test_failed_job_shows_in_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("layers=0,1", *TINY, f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 1  # Hydra re-raises the failed job's error once the other jobs are done
    assert "layers=0 is invalid" in proc.stderr
    rows = {r["layers"]: r for r in read_summary(sweep)}
    assert rows["1"]["status"] == "completed" and rows["1"]["rank"] == "1"
    assert rows["0"]["status"] == "failed"
    assert rows["0"]["reason"] == "ConfigError: layers=0 is invalid: must be an integer >= 1"
    assert "1 of 2 jobs failed" in proc.stdout and "| failed" in proc.stdout  # the table, at exit


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    # Two jobs that train, in two worker processes, and one that fails (its error must travel back).
    proc = run_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=0", "layers=1,2,0", *TINY,
                     f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 1 and "layers=0 is invalid" in proc.stderr, proc.stderr[-3000:]
    rows = {r["layers"]: r for r in read_summary(sweep)}
    assert [rows[k]["status"] for k in ("1", "2", "0")] == ["completed", "completed", "failed"]
    assert rows["0"]["reason"].startswith("ConfigError: layers=0 is invalid")
    cores = len(os.sched_getaffinity(0))
    for job in ("0_layers=1", "1_layers=2"):  # named by the swept key only
        log = (sweep / job / "train.log").read_text()
        assert f"torch threads: {max(1, cores // 2)} (joblib sweep: {cores} cores / 2 parallel jobs)" in log


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPTUNA, reason=OPTUNA_MISSING)
def test_optuna_search_runs_three_trials(tmp_path, ok):
    sweep = tmp_path / "sweep"
    ok(run_train("hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY,
                 f"hydra.sweep.dir={sweep}"))  # hparams_search sets the multirun mode itself
    rows = read_summary(sweep)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    assert {"optimizer.lr", "layers", "model.state_size"} <= set(rows[0])
    assert all(r["train/steps_to_echo"] for r in rows)  # the optimized metric, returned by every trial
    assert (sweep / "optimization_results.yaml").is_file()
    assert len({p.parent for p in event_files(sweep)}) == 3
