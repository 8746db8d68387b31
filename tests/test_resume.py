"""Nothing lost: killed, interrupted or diverged runs keep a loadable checkpoint and resume exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, assert_refused, run_train, scalars

pytestmark = pytest.mark.slow

# Long enough to be killed mid-run (6 epochs of 266 chunks, ~2-3 s of training), with dropout so that the
# RNG state matters too, and early stopping off so every run ends at the same step.
LONG = [
    "data.total_series_length=20000",
    "trainer.max_epochs=6",
    "model.net.dropout=0.1",
    "checkpoint.every_n_steps=40",
    "callbacks.early_stopping=null",
    "trainer.enable_progress_bar=false",
]
LONG_DDP = [*LONG, "device=ddp_cpu", "device.devices=2", "data.batch_size=4", "trainer.max_epochs=4"]


def start(*overrides: str, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: DDP ranks included
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 120) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while not last.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    diffs = [(a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"]]
    diffs.append((a["echo_train_state"] - b["echo_train_state"]).abs().max().item())
    for key, state in a["optimizer_states"][0]["state"].items():
        other = b["optimizer_states"][0]["state"][key]
        diffs += [(state[n] - other[n]).abs().max().item() for n in state if torch.is_tensor(state[n])]
    return max(diffs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs to compare against, one per config."""
    runs = {}

    def get(name: str, overrides: list[str]) -> Path:
        if name not in runs:
            run_dir = tmp_path_factory.mktemp("reference") / name
            proc = run_train(*overrides, run_dir=run_dir)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[name] = run_dir
        return runs[name]

    return get


def assert_same_tensorboard_steps(resumed: Path, uninterrupted: Path) -> None:
    # TensorBoard applies the resumed writer's purge_step: the killed run's steps after its checkpoint
    # are dropped, so each step appears once, and the curves equal the uninterrupted run's.
    got, want = scalars(resumed), scalars(uninterrupted)
    for tag in ("train/loss", "val/boundary_acc"):
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), f"{tag}: repeated or unordered steps"
        assert steps == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], abs=1e-6), tag


def kill_and_resume(run_dir: Path, overrides: list[str], delay: float) -> int:
    """Start a run, SIGKILL its whole process group `delay` s after its first checkpoint, resume it.

    Returns the step of the checkpoint the resume started from."""
    proc = start(*overrides, run_dir=run_dir)
    wait_for_checkpoint(proc, run_dir)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)  # power loss, every rank at once: no handler runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = final(run_dir)["global_step"]
    resumed = run_train("resume=" + str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return killed_at


@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_a_checkpoint_at_a_validation_step_is_written_after_that_validation(tmp_path):
    """Lightning resumes a checkpoint written between a batch and its validation without that validation,
    so a kill in between would lose the point for good (it happened in CI under DDP): never save there."""
    import pytorch_lightning as pl
    from conftest import make_datamodule, make_model

    from echo_lstm.callbacks.final_validation import FinalValidation
    from echo_lstm.machinery.checkpoint import LastCheckpoint

    events = []

    class Order(pl.Callback):  # runs before the checkpoint callback, which Lightning calls last
        def on_validation_end(self, trainer, pl_module):
            events.append(("validate", trainer.global_step))

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            events.append(("save", trainer.global_step))

    checkpoint = LastCheckpoint(every_n_steps=4, dirpath=tmp_path)  # a cadence due at every batch of 4 chunks
    trainer = pl.Trainer(max_epochs=2, val_check_interval=2, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Order(), FinalValidation(), checkpoint])
    tiny = ["data.total_series_length=600", "data.batch_size=2", "data.truncated_backprop_length=5",
            "data.chunks_per_batch=4", "data.val_series_length=100", "layers=1"]
    trainer.fit(make_model(*tiny), datamodule=make_datamodule(*tiny))

    validated = [step for event, step in events if event == "validate"]
    saved = {step for event, step in events if event == "save"}
    assert validated[:3] == [8, 16, 24] and validated[-1] == 120  # every 2 batches, epoch ends, final
    for step in validated:
        assert step in saved and events.index(("validate", step)) < events.index(("save", step)), (step, events)
    assert {4, 12, 20} <= saved  # the cadence still saves between validations
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 120


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_anywhere_then_resume_is_exact(tmp_path, reference, seed):
    run_dir = tmp_path / "run"
    killed_at = kill_and_resume(run_dir, LONG, random.Random(seed).uniform(0.0, 1.0))  # a seeded kill point
    want = reference("long", LONG)
    diff = max_difference(final(run_dir), final(want))
    print(f"kill point {seed}: checkpoint at step {killed_at}, max |difference| after resume {diff}")
    assert final(run_dir)["global_step"] == final(want)["global_step"] == 6 * 266
    assert diff == 0.0  # bitwise on CPU
    assert_same_tensorboard_steps(run_dir, want)


def test_sigkill_under_ddp_then_resume_is_exact(tmp_path, reference):
    run_dir = tmp_path / "run"
    killed_at = kill_and_resume(run_dir, LONG_DDP, random.Random(7).uniform(0.5, 1.5))
    want = reference("long_ddp", LONG_DDP)
    diff = max_difference(final(run_dir), final(want))
    print(f"DDP kill: checkpoint at step {killed_at}, max |difference| after resume {diff}")
    assert diff == 0.0
    assert_same_tensorboard_steps(run_dir, want)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_prints_how_to_resume_and_resume_is_exact(tmp_path, reference, signum):
    run_dir = tmp_path / "run"
    proc = start(*LONG, run_dir=run_dir)
    wait_for_checkpoint(proc, run_dir)
    time.sleep(0.3)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "error:" not in err  # a requested stop is not an error
    assert line.startswith(f"stopped by {signal.Signals(signum).name} at step") and "python train.py resume=" in line
    stopped_at = int(line.split(" at step ")[1].split(";")[0])
    assert final(run_dir)["global_step"] == stopped_at  # saved at the step it stopped, not an older one

    if signum == signal.SIGTERM:
        return  # the same stop as SIGINT's; the resume after it is checked once, below
    resumed = run_train("resume=" + str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = reference("long", LONG)
    assert max_difference(final(run_dir), final(want)) == 0.0
    assert_same_tensorboard_steps(run_dir, want)


def test_second_ctrl_c_exits_at_once(tmp_path):
    # The first Ctrl-C waits for the current block and a checkpoint; with a block of 2000 chunks that takes seconds.
    # The second one must not wait for it.
    run_dir = tmp_path / "run"
    proc = start(*LONG, "trainer.max_epochs=50", "data.chunks_per_batch=2000", "checkpoint.every_n_steps=0",
                 "trainer.val_check_interval=1", run_dir=run_dir)
    wait_for_checkpoint(proc, run_dir)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert time.monotonic() - sent < 1.0  # at once: not after the block (~2 s here)


def test_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"step": 1, "w": torch.ones(3)}, path)
    # Die (no cleanup at all) halfway through writing a big new checkpoint over it.
    code = textwrap.dedent(f"""
        import builtins, io, os, torch
        from echo_lstm.machinery.checkpoint import atomic_torch_save
        real_open = builtins.open
        class Dying(io.FileIO):
            def write(self, data):
                super().write(bytes(data)[: len(data) // 2])
                os._exit(9)
        builtins.open = lambda p, mode="r", *a, **k: Dying(p, "wb") if "w" in mode else real_open(p, mode, *a, **k)
        real_fdopen = os.fdopen  # (the temporary file is opened with O_EXCL | O_NOFOLLOW, then fdopen'ed)
        os.fdopen = lambda fd, mode="r", *a, **k: Dying(fd, "wb") if "w" in mode else real_fdopen(fd, mode, *a, **k)
        atomic_torch_save({{"step": 2, "w": torch.zeros(1_000_000)}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert torch.load(path, weights_only=True)["step"] == 1


def test_nan_stops_cleanly_and_the_last_good_checkpoint_loads(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("optimizer=sgd", "optimizer.lr=1e37", "data.chunks_per_batch=1", "checkpoint.every_n_steps=1",
                     "trainer.enable_progress_bar=false", run_dir=run_dir)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: the loss became NaN or infinite at step 3: training diverged and was stopped; the last good checkpoint "
        f"({os.path.relpath(run_dir / 'checkpoints' / 'last.ckpt', REPO)}, step 2) is kept"]
    from echo_lstm import EchoLSTM

    ckpt = final(run_dir)
    assert ckpt["global_step"] == 2  # the step before the bad one; the bad state was never written
    model = EchoLSTM.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoints_load_weights_only(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("data.total_series_length=2000", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                     run_dir=run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert len(found) == 2 and found[0].startswith("best-step") and found[1] == "last.ckpt", found
    for name in found:
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)  # no pickled code: safe loading works
        assert ckpt["echo_train_state"].shape == (3, 2, 5, 4)
        assert ckpt["global_step"] == (26 if name == "last.ckpt" else int(name[len("best-step"):-len(".ckpt")]))


def test_resume_refuses_a_change_of_experiment(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train("data.total_series_length=2000", "trainer.max_epochs=1", "layers=2",
                     run_dir=run_dir).returncode == 0
    for override, key in (("layers=4", "layers"), ("optimizer.lr=0.1", "optimizer.lr"), ("seed=9", "seed"),
                          ("model.carry_state=false", "model.carry_state")):
        proc = run_train(f"resume={run_dir}", override)
        assert_refused(proc, f"{key}=", "cannot change when resuming")
    # Allowed: more epochs, another device setting; the run's own overrides (layers=2) are kept.
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=2", "layers=2", "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert final(run_dir)["hyper_parameters"]["net"]["layers"] == 2
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count("layers=2") == 1  # original kept
    assert len(list((run_dir / ".hydra").glob("resumed-*/config.yaml"))) == 1  # the refused ones left none


PROBE = '''import os, signal
import pytorch_lightning as pl
class Probe(pl.Callback):  # SIGTERM to itself at the start of (epoch, batch) = $PROBE
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        at = os.environ.get("PROBE")
        if at and (trainer.current_epoch, batch_idx) == tuple(map(int, at.split(","))):
            os.kill(os.getpid(), signal.SIGTERM)
'''


@pytest.mark.slow
def test_stops_at_an_epochs_last_batch_then_inside_the_next_epoch_continue_exactly(tmp_path):
    # A run restored from a checkpoint of an epoch's last batch once saved the next epoch's checkpoints as "epoch
    # not begun" (Lightning's counters): continued, it trained that epoch's first blocks again (compat.py).
    (tmp_path / "probe.py").write_text(PROBE)
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    args = [*tiny, "trainer.max_epochs=4", "callbacks.early_stopping=null", "+callbacks.probe._target_=probe.Probe"]
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)  # (keep a mutant's)
    env = {"PYTHONPATH": path, "SLURM_JOB_ID": "99"}  # (continued in place as a requeued SLURM job)
    assert run_train(*args, run_dir=tmp_path / "whole", env={"PYTHONPATH": path}).returncode == 0
    run_dir = tmp_path / "stopped"
    for at in ("1,14", "2,6"):  # 15 blocks an epoch: its last one, then one inside the next epoch
        proc = run_train(*args, run_dir=run_dir, env={**env, "PROBE": at})
        assert proc.returncode == 143, proc.stderr[-2000:]
    assert run_train(*args, run_dir=run_dir, env=env).returncode == 0
    whole, stopped = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
                      for d in (tmp_path / "whole", run_dir))
    assert whole["global_step"] == stopped["global_step"] == 240
    assert all(torch.equal(whole["state_dict"][k], stopped["state_dict"][k]) for k in whole["state_dict"])
