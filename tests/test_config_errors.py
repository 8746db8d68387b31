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


def _foreign_checkpoint(tmp_path):
    import torch

    path = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.ones(2)}, path)
    return path


def _corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    return path


def _pickle_with_code(tmp_path):
    import pickle

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": print}))  # would call code with weights_only=False
    return path


def _run_without_checkpoint(tmp_path):
    run = tmp_path / "empty_run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    return run


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


# (name, overrides built from tmp_path, what the message must name)
PREPARED = [
    ("resume-missing-dir", lambda t: [f"resume={t / 'no_such_run'}"], "resume="),
    ("resume-no-checkpoint", lambda t: [f"resume={_run_without_checkpoint(t)}"], "holds no checkpoint"),
    ("resume-latest-none", lambda t: ["resume=latest"], "resume='latest'"),
    ("ckpt-missing", lambda t: [f"ckpt_path={t / 'none.ckpt'}"], "ckpt_path="),
    ("ckpt-corrupt", lambda t: [f"ckpt_path={_corrupt_checkpoint(t)}"], "is not a readable checkpoint"),
    ("ckpt-foreign", lambda t: [f"ckpt_path={_foreign_checkpoint(t)}"], "is not an echo-lstm checkpoint"),
    ("ckpt-pickled-code", lambda t: [f"ckpt_path={_pickle_with_code(t)}"], "is not a readable checkpoint"),
    ("unwritable-run-dir", lambda t: [f"hydra.run.dir={_a_file(t)}/run"], "hydra.run.dir"),
    ("unwritable-sweep-dir", lambda t: ["-m", f"hydra.sweep.dir={_a_file(t)}/sweep"], "hydra.sweep.dir"),
]


@pytest.mark.parametrize("name,make,expected", PREPARED, ids=[p[0] for p in PREPARED])
def test_bad_resume_checkpoint_or_output_fails_cleanly(name, make, expected, tmp_path):
    overrides = make(tmp_path)
    multirun = overrides[0] == "-m"
    sets_dir = any(o.startswith(("hydra.run.dir", "resume")) for o in overrides)
    run_dir = None if multirun or sets_dir else tmp_path / "run"
    proc = run_train(*overrides[multirun:], run_dir=run_dir, cwd=tmp_path, timeout=120, multirun=multirun)
    message = proc.stdout + proc.stderr
    assert proc.returncode == 2, message
    assert expected in message, message
    assert "Traceback" not in message, message
    assert len(message.strip().splitlines()) <= 2, message
    if run_dir is not None:
        assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()


def test_incompatible_checkpoint_is_refused(tmp_path):
    run = tmp_path / "small"
    assert run_train("layers=2", "data.total_series_length=2000", "trainer.max_epochs=1",
                     "trainer.enable_progress_bar=false", run_dir=run).returncode == 0
    proc = run_train(f"ckpt_path={run}/checkpoints/last.ckpt", run_dir=tmp_path / "new")
    assert proc.returncode == 2
    assert "was trained with layers=2, the config asks for 3" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "new").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A 4 KiB tmpfs: room for a directory, not for a checkpoint (needs root to mount)."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_full_disk_when_saving_fails_cleanly(tmp_path, full_disk):
    proc = run_train("data.total_series_length=2000", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                     f"callbacks.model_checkpoint.dirpath={full_disk}/checkpoints", run_dir=tmp_path / "run")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(full_disk.rglob("*.tmp-*"))  # no half-written file left behind
