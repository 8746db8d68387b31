"""The safety promises, end to end through `python train.py` as a user runs it:
- a refused run is one `error:` line, exit code 2, no traceback, no Hydra hint, and it leaves nothing behind;
- nothing that existed before a run is deleted or overwritten, whatever is refused and when;
- every run gets its own dir (claimed atomically); a run dir in use by a live run cannot be resumed;
- a run dir from someone else cannot make `resume=` run code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, assert_refused, compose, run_train, tree

pytestmark = pytest.mark.slow


def run_all(cases: list[list[str]], cwd: Path = REPO, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """`python train.py ARGS` for each case, two at a time (each is mostly start-up: both cores are used)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_train(*args, cwd=cwd, env=env, timeout=300), cases))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (its dir), trained in-process."""
    from echo_lstm.training import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose(*TINY, "layers=2", "figure.every_n_steps=0", run_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    train(cfg)
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*TINY, "layers=2"]))
    return run_dir


def edited(tmp_path: Path, trained: Path, name: str, change) -> Path:
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    change(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------------------------------------- nothing of the user's
def test_a_refused_run_never_touches_an_existing_dir(tmp_path, trained):
    """The cases of the issue: each would have deleted the user's dir."""
    thesis = tmp_path / "p"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("x")
    outputs = tmp_path / "outputs"
    shutil.copytree(trained, outputs / "runs" / "a_run")
    before = {"p": tree(thesis), "outputs": tree(outputs)}
    results = run_all([
        [f"hydra.run.dir={thesis}", f"ckpt_path={tmp_path}/missing.ckpt"],
        ["hydra.run.dir=.", "device=gpu"],  # from a cwd holding the user's files
        ["hydra.run.dir=outputs", "ckpt_path=outputs/runs/a_run/checkpoints/lst.ckpt"],
    ], cwd=tmp_path)
    expected = ["no such checkpoint file", "exists and is not empty", "no such checkpoint file"]
    for proc, names in zip(results, expected, strict=True):
        assert_refused(proc, names)
    assert tree(thesis) == before["p"] and tree(outputs) == before["outputs"]


def test_an_empty_dir_the_user_named_is_used_and_on_refusal_emptied_not_removed(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_train("data.echo_step=abc", run_dir=tmp_path / "empty")
    assert_refused(proc, "data.echo_step=abc")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    proc = run_train(f"ckpt_path={tmp_path}/corrupt.ckpt", run_dir=tmp_path / "empty")  # refused after the claim
    assert_refused(proc, "ckpt_path=", "is not a readable checkpoint")
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())


REFUSED_AFTER_THE_CLAIM = [
    # (overrides, what the line names): each is refused once the run dir exists (it needs torch or Lightning).
    (["ckpt_path={corrupt}"], "is not a readable checkpoint"),
    (["ckpt_path={foreign}"], "is not an echo-lstm checkpoint"),
    (["ckpt_path={pickled}"], "loading it could run code"),
    (["ckpt_path={no_loops}", "layers=2"], "lacks loops"),  # an edited or older checkpoint
    (["ckpt_path={bad_state}", "layers=2"], "its carried state has shape (2, 2, 9, 4)"),
    (["ckpt_path={trained_ckpt}"], "was trained with layers=2, the config asks for 3"),
    (["trainer.profiler=nonsense"], "trainer.profiler='nonsense' is invalid: Lightning refuses it"),
    (["trainer.max_time=abc"], "trainer.max_time='abc' is invalid: Lightning refuses it"),
    (["optimizer._target_=torch.optim.Nope"], "optimizer._target_=torch.optim.Nope is invalid: cannot be built"),
    (["model.net._target_=torch.nn.Linear"], "model.net._target_=torch.nn.Linear is invalid: cannot be built: "
                                              "Linear.__init__() got an unexpected keyword argument 'cell'"),
    # a constructor's own check (issue 19: the ranges' one home), named by the setting
    (["data.echo_step=20000"], "data.echo_step=20000 is invalid: must be shorter than a stream"),
    (["data.batch_size=0"], "data.batch_size=0 is invalid: must be an integer >= 1"),
    (["model.net.state_size=0"], "model.net.state_size=0 is invalid: must be an integer >= 1"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is invalid: Adagrad refuses it"),
    *([] if torch.cuda.is_available() else [(["device=gpu"], "no CUDA GPU is visible")]),
]


def test_refusals_after_the_run_dir_was_made_leave_nothing(tmp_path, trained):
    import pickle

    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.ckpt")
    (tmp_path / "pickled.ckpt").write_bytes(pickle.dumps({"state_dict": print}))
    paths = {"tmp": tmp_path, "corrupt": tmp_path / "corrupt.ckpt", "foreign": tmp_path / "foreign.ckpt",
             "pickled": tmp_path / "pickled.ckpt", "trained_ckpt": trained / "checkpoints" / "last.ckpt",
             "no_loops": edited(tmp_path, trained, "no_loops.ckpt", lambda c: c.pop("loops")),
             "bad_state": edited(tmp_path, trained, "state.ckpt",
                                 lambda c: c.update(echo_train_state=torch.zeros(2, 2, 9, 4)))}
    cases = [[o.format(**paths) for o in overrides] + [f"hydra.run.dir={tmp_path}/run{i}"]
             for i, (overrides, _) in enumerate(REFUSED_AFTER_THE_CLAIM)]
    for i, (proc, (_, expected)) in enumerate(zip(run_all(cases), REFUSED_AFTER_THE_CLAIM, strict=True)):
        assert_refused(proc, expected)
        assert not (tmp_path / f"run{i}").exists(), expected


@pytest.mark.parametrize("where", ["proc", "loop", "long"])
def test_an_impossible_run_dir_is_one_line(tmp_path, where):
    if where == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
    run_dir = {"proc": "/proc/echo-lstm-run", "loop": f"{tmp_path}/a/run", "long": f"{tmp_path}/{'x' * 300}/run"}
    assert_refused(run_train(run_dir=run_dir[where]), "hydra.run.dir=", "cannot be created")


# ---------------------------------------------------------------------------------------------- own dirs, locks
def test_runs_started_in_the_same_second_get_their_own_dirs(tmp_path):
    from echo_lstm.machinery import rundir

    first = rundir.claim_new(tmp_path / "2026-01-01_00-00-00", "hydra.run.dir", unique=True)
    second = rundir.claim_new(tmp_path / "2026-01-01_00-00-00", "hydra.run.dir", unique=True)
    assert (first.path.name, second.path.name) == ("2026-01-01_00-00-00", "2026-01-01_00-00-00_1")
    # And for real: two train.py processes at once, each with the default run dir name.
    procs = run_all([[*TINY, "trainer.max_epochs=1"], [*TINY, "trainer.max_epochs=1"]], cwd=tmp_path)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())  # two dirs (a suffix if they started together)
    assert len(runs) == 2 and all(len(list(r.glob("events.out.tfevents.*"))) == 1 for r in runs)


def test_a_run_in_use_cannot_be_resumed_and_a_dead_runs_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    live = subprocess.Popen([sys.executable, str(REPO / "train.py"), "data.total_series_length=20000",
                             "trainer.max_epochs=50", "callbacks.early_stopping=null", "checkpoint.every_n_steps=40",
                             "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert live.poll() is None and time.time() < deadline
            time.sleep(0.05)
        line = assert_refused(run_train(f"resume={run_dir}"), "is in use by a live run", f"pid {live.pid}")
        assert "resume=" in line
    finally:
        live.kill()
        live.wait()
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=1")  # the dead run's lock is taken over
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- resume safety
@pytest.mark.parametrize("stored,names", [
    ("+callbacks.x._target_=shutil.copyfile", "adds a key"),
    ("callbacks.early_stopping._target_=shutil.copyfile", "names code"),
    ("layers=${oc.env:HOME}", "is an interpolation"),
    ("hydra.run.dir=/tmp", "names code or Hydra settings"),
    ("model.net.nonsense=1", "is not a key of this app's config"),
    ("optimizer=../../evil", "is not an option of the optimizer group"),
])
def test_resume_refuses_stored_overrides_that_are_not_plain_settings(tmp_path, trained, stored, names):
    run_dir = tmp_path / "received"
    shutil.copytree(trained, run_dir)
    with open(run_dir / ".hydra" / "overrides.yaml", "a") as f:
        f.write(f"- {stored}\n")
    before = tree(run_dir)
    assert_refused(run_train(f"resume={run_dir}"), f"resume={run_dir}: stored override", names)
    assert tree(run_dir) == before  # nothing written, not even a .hydra/resumed-* dir or a log line


def test_resume_accepts_a_value_equal_to_the_runs_own_and_records_the_resumed_config(tmp_path, trained):
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    proc = run_train(f"resume={run_dir}", "layers=2", "seed=1234", "trainer.max_epochs=3")  # 1234: the default
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"continuing {os.path.relpath(run_dir, REPO)} from step 120 (epoch 1)" in proc.stdout
    resumed = list((run_dir / ".hydra").glob("resumed-*/config.yaml"))
    assert len(resumed) == 1
    cfg = OmegaConf.load(resumed[0])
    assert cfg.layers == 2 and cfg.data.total_series_length == 600 and cfg.trainer.max_epochs == 3
    refused = run_train(f"resume={run_dir}", "layers=4")
    assert_refused(refused, "layers=4", "cannot change when resuming (the run used 2)")
    assert len(list((run_dir / ".hydra").glob("resumed-*"))) == 1  # the refused resume left nothing


# ---------------------------------------------------------------------------------------------- every error promise
def test_hydra_level_mistakes_are_one_line(tmp_path):
    cases = [["layerz=5"], ["device=tpu9"], ["layers=abc"], ["layers=[1"], ["seed=-1"], ["threads=1000"],
             ["model.net.forget_bias=nan"], ["optimizer.weight_decay=inf"], ["trainer.check_val_every_n_epoch=0"],
             ["model.net.state_size=100000"], ["optimizer.lr=1e308"], ["+data.noise=0.1"], ["model.net.layers=5"],
             ["trainer=gpu"], ["seed=null"]]
    for case, proc in zip(cases, run_all([[*c, f"hydra.run.dir={tmp_path}/run"] for c in cases]), strict=True):
        assert_refused(proc, case[0].split("=")[0].lstrip("+") + "=")
    assert not (tmp_path / "run").exists()


def test_a_sweep_with_a_bad_job_marks_it_failed_and_ends_with_one_error_line(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("layers=0,1", *TINY, f"hydra.sweep.dir={sweep}", multirun=True)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr and "Error executing job" not in proc.stderr
    assert lines[0].startswith("error: 1 of 2 jobs failed") and "layers=0 is invalid" in lines[0]
    assert "job 0 (layers=0) failed: layers=0 is invalid: must be an integer >= 1" in proc.stderr
    assert "| failed" in (sweep / "summary.md").read_text() and not (sweep / "0_layers=0").exists()


def test_divergence_before_any_checkpoint_does_not_claim_one_is_kept(tmp_path):
    proc = run_train("optimizer=sgd", "optimizer.lr=1e37", "data.chunks_per_batch=1", "checkpoint.every_n_steps=0",
                     "trainer.val_check_interval=600", "trainer.enable_progress_bar=false", run_dir=tmp_path / "run")
    line = assert_refused(proc, "the loss became NaN or infinite at step", code=3)
    assert "no checkpoint was written yet" in line and "kept" not in line


def test_ctrl_c_is_a_stop_not_an_error_and_at_start_up_no_traceback(tmp_path):
    run_dir = tmp_path / "early"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # importing torch and Lightning (it takes seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and "error:" not in err and "stopped by SIGINT" in err
    assert not run_dir.exists()  # nothing trained, nothing kept


def test_stray_local_rank_in_the_environment_is_ignored_with_a_warning(tmp_path):
    env = {"LOCAL_RANK": "1"}
    proc = run_train(*TINY, "trainer.max_epochs=1", run_dir=tmp_path / "run", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: ignoring LOCAL_RANK from the environment" in proc.stderr
    refused = run_train("layers=0", run_dir=tmp_path / "bad", env=env)  # errors still speak
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: layers=0 is")


def test_a_slurm_jobs_run_dir_is_continued_only_by_that_job_when_requeued(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "layers=2"]
    assert run_train(*args, run_dir=run_dir, env={"SLURM_JOB_ID": "77"}).returncode == 0  # job 77, 2 epochs
    assert (run_dir / ".slurm_job_id").read_text() == "77\n"
    before = tree(run_dir)
    assert_refused(run_train(*args, run_dir=run_dir, env={"SLURM_JOB_ID": "78"}), "exists and is not empty")
    assert_refused(run_train(*args, run_dir=run_dir), "exists and is not empty")
    assert tree(run_dir) == before
    # The requeued job itself, its checkpoint replaced by another run's (the same network), then missing:
    last = run_dir / "checkpoints" / "last.ckpt"
    shutil.move(last, tmp_path / "saved.ckpt")
    assert run_train(*args, run_dir=tmp_path / "other").returncode == 0
    shutil.copy(tmp_path / "other" / "checkpoints" / "last.ckpt", last)
    before = tree(run_dir)
    env = {"SLURM_JOB_ID": "77"}
    assert_refused(run_train(*args, run_dir=run_dir, env=env), "saved by no SLURM job", "foreign checkpoint")
    last.unlink()
    assert_refused(run_train(*args, run_dir=run_dir, env=env), "SLURM job 77 was requeued", "is missing")
    shutil.move(tmp_path / "saved.ckpt", last)
    unlocked = {k: v for k, v in tree(run_dir).items() if k != ".lock"}  # (.lock: the PID of the last claimer)
    assert unlocked == {k: v for k, v in before.items() if k != ".lock"} | {"checkpoints/last.ckpt": last.read_bytes()}
    proc = run_train(*args, "trainer.max_epochs=3", run_dir=run_dir, env=env)  # requeued 77
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continuing" in proc.stdout and "from step 120" in proc.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 180


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs (mounting needs root): room for a run's first files, not for its checkpoints."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("where", ["checkpoints", "event file"])
def test_a_full_disk_is_one_line_naming_the_file(small_disk, where):
    args = ["data.total_series_length=20000", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
    if where == "event file":  # no checkpoints: TensorBoard's writer thread meets the full disk first
        args += ["callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null"]
    else:  # no event file (its size depends on the figure's PNGs): the checkpoints meet it first
        args += ["logger=none", "figure.every_n_steps=0"]
    proc = run_train(*args, run_dir=small_disk / "run")
    line = assert_refused(proc, "No space left on device", code=4)
    named = "/checkpoints/" if where == "checkpoints" else "events.out.tfevents"
    assert line.startswith(f"error: could not write {small_disk}/run") and named in line, line
    assert not list(small_disk.rglob("*.tmp-*"))  # no half-written checkpoint left behind
