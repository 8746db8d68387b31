"""Every bad input is refused before training: a short message naming the key, exit != 0, no traceback,
and no run directory left behind that could pass for a run."""

import pytest

from conftest import compose, run_train
from echo_lstm.config import ConfigError, validate

BAD = [
    # (override, what the message must name)
    ("layers=0", "layers"),
    ("layers=-2", "layers"),
    ("layers=abc", "layers"),
    ("layers=1.5", "layers"),
    ("layerz=5", "layerz"),
    ("model.state_size=0", "model.state_size"),
    ("model.cell=lstmm", "model.cell"),
    ("model.dropout=1.0", "model.dropout"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.truncated_backprop_length=0", "data.truncated_backprop_length"),
    ("data.echo_step=-1", "data.echo_step"),
    ("data.total_series_length=10", "data.total_series_length"),
    ("data.val_series_length=3", "data.val_series_length"),
    ("data.chunks_per_batch=0", "data.chunks_per_batch"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("optimizer.name=rmsprop", "optimizer.name"),
    ("optimizer.initial_accumulator_value=-1", "optimizer.initial_accumulator_value"),
    ("optimizer=lbfgs", "optimizer"),
    ("target_acc=1.5", "target_acc"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval"),
    ("seed=x", "seed"),
    ("threads=-1", "threads"),
    ("checkpoint.every_n_steps=-5", "checkpoint.every_n_steps"),
    ("device=tpu9", "device"),
    *([] if __import__("torch").cuda.is_available() else [("device=gpu", "device.accelerator")]),
    ("device.devices=0", "device.devices"),
    ("device.num_nodes=0", "device.num_nodes"),
    ("device.precision=8-bit", "device.precision"),
    ("device=ddp_cpu data.batch_size=5", "data.batch_size"),  # 5 streams cannot split over 2 processes
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_bad_override_fails_cleanly(override, key, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(*override.split(), run_dir=run_dir, timeout=60)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in message, message
    assert "Traceback" not in message, message
    assert not run_dir.exists(), "a refused run must not leave a run directory behind"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_gpu_request_without_gpu_is_refused_before_training(tmp_path):
    proc = run_train("device=gpu", run_dir=tmp_path / "run", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: device.accelerator='gpu' is invalid: no CUDA GPU")


def test_validate_names_key_value_and_range():
    cfg = compose("layers=0")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == "layers=0 is invalid: must be an integer >= 1"


def test_defaults_are_valid():
    assert validate(compose()) == []
