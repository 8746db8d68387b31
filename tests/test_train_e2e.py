"""End to end through `python train.py`, as a user runs it."""

import pytest
import torch
from conftest import TINY, event_files, run_train, scalars

from echo_lstm import EchoLSTM

pytestmark = pytest.mark.slow


def test_default_run_learns_the_echo_and_writes_everything(tmp_path, ok):
    run_dir = tmp_path / "run"
    proc = ok(run_train("trainer.enable_progress_bar=false", run_dir=run_dir))
    assert "learned the echo" in proc.stdout
    assert "tensorboard --logdir" in proc.stdout

    metrics = scalars(run_dir)
    for tag in ("train/loss", "train/acc", "train/boundary_acc", "val/loss", "val/acc", "val/boundary_acc"):
        assert tag in metrics, f"{tag} not logged; have {sorted(metrics)}"
    assert metrics["val/boundary_acc"][-1][1] >= 0.99
    assert metrics["val/acc"][-1][1] >= 0.99
    steps = [s for s, _ in metrics["train/loss"]]
    assert steps == sorted(steps) and steps[0] > 0  # x axis = optimizer steps (chunks)
    assert steps[-1] < 5 * 666  # stopped early, long before 100 epochs
    val_steps = [s for s, _ in metrics["val/acc"]]
    assert val_steps == list(range(128, 128 * len(val_steps) + 1, 128))  # validated every 2 batches of 64 chunks
    assert len(event_files(run_dir)) == 1

    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the resolved config lives with the run
    last = run_dir / "checkpoints" / "last.ckpt"
    best = [p for p in (run_dir / "checkpoints").glob("best*.ckpt")]
    assert last.is_file() and len(best) == 1
    model = EchoLSTM.load_from_checkpoint(last)
    logits, state = model(torch.randint(0, 2, (5, 15)))
    assert logits.shape == (5, 15, 2) and state.shape == (3, 2, 5, 4)


def test_hparams_tab_holds_the_config_and_final_metrics(tmp_path, ok):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "run"
    ok(run_train(*TINY, "layers=2", run_dir=run_dir))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val/acc", "val/boundary_acc"} <= metric_tags
    hparams = session.session_start_info.hparams
    assert hparams["layers"].number_value == 2
    assert hparams["data.truncated_backprop_length"].number_value == 5
    assert hparams["optimizer.name"].string_value == "adagrad"


def test_layers_override_builds_five_layers_and_max_epochs_passes_through(tmp_path, ok):
    run_dir = tmp_path / "run"
    ok(run_train(*TINY, "layers=5", run_dir=run_dir))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    model = EchoLSTM.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.rnn.num_layers == 5 and model.hparams.layers == 5
    assert ckpt["echo_train_state"].shape == (5, 2, 2, 4)
    # TINY: 300 steps per stream / 5 = 60 chunks per epoch; trainer.max_epochs=2 -> 120 optimizer steps.
    assert ckpt["global_step"] == 120


def test_same_seed_same_weights(tmp_path, ok):
    weights = []
    for name in ("a", "b"):
        ok(run_train(*TINY, "seed=5", run_dir=tmp_path / name))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_echo_longer_than_a_chunk_is_allowed_with_a_warning(tmp_path, ok):
    proc = ok(run_train(*TINY, "data.echo_step=6", "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    assert "warning: data.echo_step=6 >= data.truncated_backprop_length=5" in proc.stderr
