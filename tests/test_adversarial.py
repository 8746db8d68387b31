"""A stranger's run dir or checkpoint is data, never instructions (issue 17). Each test builds an attack, or a
clumsy user's mistake, and checks the user's files byte for byte afterwards:
- crafted callback state in a checkpoint (paths that Lightning would delete);
- symlinks and hard links in a run dir (files written wherever they point);
- exceptions that Hydra would swallow inside the preflight callback (the claim skipped);
- finished runs and sweep job dirs (rewritten, shared, escaped).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_refused, compose, run_train, tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with a best-k checkpoint (its dir), trained in-process, with the .hydra files a resume
    reads."""
    from omegaconf import OmegaConf

    from echo_lstm.training import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    overrides = [*TINY, "layers=1", "figure.every_n_steps=0", "callbacks.early_stopping=null"]
    cfg = compose(*overrides, run_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    train(cfg)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "train.log").write_text("the first session\n")
    return run_dir


@pytest.fixture
def user(tmp_path) -> Path:
    """The user's own files, which no run may touch: a dir tree and a shell start-up file."""
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("years of work\n")
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (home / "notes.ckpt").write_bytes(b"not a checkpoint, but named like one")
    return home


def received(tmp_path: Path, trained: Path, name: str = "received") -> Path:
    """A copy of a run dir as it arrives from someone else (without its `result.json`: a run to continue)."""
    run_dir = tmp_path / name
    shutil.copytree(trained, run_dir)
    (run_dir / "result.json").unlink()
    return run_dir


# ---------------------------------------------------------------------------------------------- 1. callback state
def best_k_state(ckpt: dict) -> dict:
    states = [s for k, s in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(states) == 1 and "best_k_models" in states[0], list(ckpt["callbacks"])
    return states[0]


def craft(path: Path, victim: str, dirpath: str | None) -> None:
    """Point ModelCheckpoint's restored state at `victim`, with the worst score: the next best deletes it."""
    ckpt = torch.load(path, weights_only=True)
    state = best_k_state(ckpt)
    state.update(best_k_models={victim: torch.tensor(-1.0)}, kth_best_model_path=victim, best_model_path=victim,
                 kth_value=torch.tensor(-1.0), best_model_score=torch.tensor(-1.0))
    if dirpath is not None:
        state["dirpath"] = dirpath  # equal to the resumed run's own: Lightning restores the whole state
    torch.save(ckpt, path)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["dir", "file", "dotdot", "symlink"])
def test_crafted_checkpoint_state_never_deletes_outside_the_run(tmp_path, trained, user, victim):
    run_dir = received(tmp_path, trained)
    checkpoints = os.path.realpath(run_dir / "checkpoints")
    if victim == "symlink":  # a link inside the run's checkpoints dir to the user's file
        (run_dir / "checkpoints" / "best-step0.ckpt").symlink_to(user / "notes.ckpt")
    target = {"dir": str(user / "thesis"), "file": str(user / "notes.ckpt"),
              "dotdot": f"{checkpoints}/../../home/thesis",  # passes Lightning's text-prefix check
              "symlink": f"{checkpoints}/best-step0.ckpt"}[victim]
    craft(run_dir / "checkpoints" / "last.ckpt", target, dirpath=checkpoints)
    before = tree(user)
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=4")
    assert tree(user) == before  # byte for byte
    if victim == "symlink":  # a run dir with links is refused as a whole (class 2)
        assert_refused(proc, "resume=", "a symlink")
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(list((run_dir / "checkpoints").glob("best-step*.ckpt"))) >= 1


@pytest.mark.slow
def test_a_checkpoint_from_elsewhere_starts_a_new_run_without_its_paths(tmp_path, trained, user):
    source = received(tmp_path, trained, "colleague")
    craft(source / "checkpoints" / "last.ckpt", str(user / "notes.ckpt"), dirpath=None)
    before = tree(user)
    new = tmp_path / "new"
    proc = run_train(*TINY, "layers=1", "trainer.max_epochs=4", f"ckpt_path={source}/checkpoints/last.ckpt",
                     run_dir=new)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree(user) == before and str(user) not in proc.stdout  # not even named as the best checkpoint


@pytest.mark.slow
def test_an_own_resume_keeps_its_best_k_bookkeeping(tmp_path, trained):
    """The guard drops only foreign paths: a run's own best checkpoint is still replaced by a better one."""
    run_dir = received(tmp_path, trained)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    state = best_k_state(ckpt)  # as if the run had been trained here (Lightning forgets best-k of a moved dir)
    moved = {k: (v.replace(os.path.realpath(trained), os.path.realpath(run_dir)) if isinstance(v, str) else v)
             for k, v in state.items()}
    moved["best_k_models"] = {k.replace(os.path.realpath(trained), os.path.realpath(run_dir)): v
                              for k, v in state["best_k_models"].items()}
    state.update(moved)
    torch.save(ckpt, last)
    for stale in [".last.ckpt.tmp-4242", ".best-step8.ckpt.tmp-4242"]:  # saves killed in an earlier session
        (run_dir / "checkpoints" / stale).write_bytes(b"half a checkpoint")
    old_best = [p.name for p in (run_dir / "checkpoints").glob("best-step*.ckpt")]
    assert len(old_best) == 1 and Path(state["best_model_path"]).name == old_best[0]
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    new_best = [p.name for p in (run_dir / "checkpoints").glob("best-step*.ckpt")]
    assert len(new_best) == 1 and new_best != old_best  # save_top_k 1: the old best was replaced
    assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))  # the stale temp files are cleaned


def test_foreign_callback_paths_are_dropped_and_own_ones_kept(tmp_path, user):
    from echo_lstm.machinery.resume import drop_foreign_paths

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "best-step8.ckpt").write_bytes(b"x")
    own = str(checkpoints / "best-step8.ckpt")

    def state(path: str) -> dict:
        return {"callbacks": {"ModelCheckpoint{}": {"best_k_models": {path: 0.5}, "kth_best_model_path": path,
                                                    "best_model_path": path, "last_model_path": "",
                                                    "best_model_score": 0.5, "dirpath": str(checkpoints)}}}

    kept = state(own)
    drop_foreign_paths(kept, checkpoints)
    assert kept == state(own)
    for foreign in [str(user / "thesis"), str(user / "notes.ckpt"), f"{checkpoints}/../../../home/notes.ckpt",
                    f"{checkpoints}/missing.ckpt", "relative/../x.ckpt", ""]:
        crafted = state(foreign)
        drop_foreign_paths(crafted, checkpoints)
        dropped = crafted["callbacks"]["ModelCheckpoint{}"]
        assert dropped["best_k_models"] == {} and dropped["best_model_path"] == dropped["kth_best_model_path"] == ""


def test_checkpoint_io_deletes_only_regular_checkpoint_files_of_its_run(tmp_path, user):
    from echo_lstm.machinery.checkpoint import AtomicCheckpointIO

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "best-step8.ckpt").write_bytes(b"x")
    (checkpoints / "link.ckpt").symlink_to(user / "notes.ckpt")
    (checkpoints / "sub.ckpt").mkdir()
    before = tree(user)
    io = AtomicCheckpointIO(checkpoints)
    for path in [user / "thesis", user / "notes.ckpt", checkpoints / "link.ckpt", checkpoints / "sub.ckpt",
                 f"{checkpoints}/../../home/notes.ckpt", user / ".bashrc"]:
        io.remove_checkpoint(str(path))
    io.remove_checkpoint(str(checkpoints / "best-step8.ckpt"))
    assert tree(user) == before and (checkpoints / "sub.ckpt").is_dir() and (checkpoints / "link.ckpt").is_symlink()
    assert not (checkpoints / "best-step8.ckpt").exists()


# ---------------------------------------------------------------------------------------------- 2. links in a run dir
LINKS = {  # a name in the run dir -> where it points in the user's home
    "train.log": ".bashrc", "result.json": ".bashrc", ".lock": ".bashrc", "hparams.yaml": ".bashrc",
    "checkpoints/best-step0.ckpt": "notes.ckpt", ".hydra/hydra.yaml": ".bashrc", "figures": "thesis",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*LINKS, "checkpoints", ".hydra", "hardlink", "fifo"])
def test_a_run_dir_with_links_is_refused_untouched(tmp_path, trained, user, name):
    run_dir = received(tmp_path, trained)
    if name in LINKS:
        (run_dir / name).unlink(missing_ok=True)
        (run_dir / name).symlink_to(user / LINKS[name])
    elif name == "hardlink":  # train.log is appended in place: a hard link would append to the user's file
        (run_dir / "train.log").unlink()
        os.link(user / ".bashrc", run_dir / "train.log")
    elif name == "fifo":
        os.mkfifo(run_dir / "train.log.fifo")
    else:  # the whole subdir moved to the user's home, a link left in its place
        shutil.move(run_dir / name, user / name)
        (run_dir / name).symlink_to(user / name)
    before, run_before = tree(user), tree(run_dir)
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=4")
    if name in (".hydra", "checkpoints"):
        line = assert_refused(proc, "resume=")  # its files are missing, or it holds a link
    else:
        line = assert_refused(proc, "resume=", "copy the run without links")
    assert "\n" not in line
    assert tree(user) == before and tree(run_dir) == run_before


@pytest.mark.slow
def test_a_link_that_stays_inside_the_run_dir_is_no_reason_to_refuse(tmp_path, trained):
    run_dir = received(tmp_path, trained)
    (run_dir / "wandb" / "offline-run-1").mkdir(parents=True)
    (run_dir / "wandb" / "latest-run").symlink_to("offline-run-1")  # as W&B makes it
    proc = run_train(f"resume={run_dir}", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_write_file_replaces_links_and_never_writes_through_them(tmp_path, user):
    from echo_lstm.machinery.rundir import write_file

    before = tree(user)
    target = tmp_path / "result.json"
    target.symlink_to(user / ".bashrc")
    (tmp_path / f".result.json.tmp-{os.getpid()}").symlink_to(user / "notes.ckpt")  # a planted temp name
    write_file(target, "{}\n")
    assert tree(user) == before
    assert not target.is_symlink() and target.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------- 3. swallowed errors
@pytest.mark.slow
def test_an_error_hydra_would_swallow_leaves_an_existing_run_untouched(tmp_path, trained):
    """Any exception in the preflight used to become a warning: the claim skipped, the run's .hydra overwritten."""
    run_dir = received(tmp_path, trained)
    before = tree(run_dir)
    cases = [["layers=${oc.env:ECHO_LSTM_UNSET}"], ["trainer.max_epochs=${oc.env:ECHO_LSTM_UNSET}"],
             ["model.net=5"], ["optimizer=5"]]
    for case in cases:
        proc = run_train(*case, run_dir=run_dir)
        assert_refused(proc, case[0].split("=")[0] + "=")
        assert tree(run_dir) == before, case


@pytest.mark.slow
def test_failures_before_the_run_are_one_line_and_leave_nothing(tmp_path, trained):
    conf = tmp_path / "myconf" / "optimizer"
    conf.mkdir(parents=True)
    (conf / "asgd.yaml").write_text("_target_: torch.optim.ASGD\n  lr: [0.05\n")  # not YAML
    ckpt = trained / "checkpoints" / "last.ckpt"
    bad = torch.load(ckpt, weights_only=True)
    state = next(iter(bad["optimizer_states"][0]["state"].values()))
    state["sum"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad_optimizer.ckpt")
    cases = [  # (overrides, what the line names)
        (["model.net=5"], "model.net=5 is invalid"),
        (["callbacks.early_stopping=5"], "callbacks.early_stopping=5 is invalid"),
        (["logger=5"], "logger=5 is invalid: must be one of"),
        ([f"hydra.searchpath=[file://{tmp_path}/myconf]", "optimizer=asgd"], "asgd.yaml, line 2 is invalid"),
        (["layers=1", f"ckpt_path={ckpt}", "optimizer=adam"], "its optimizer state does not fit Adam"),
        (["layers=1", f"ckpt_path={tmp_path}/bad_optimizer.ckpt"], "sum has shape (3, 3)"),
    ]
    for i, (overrides, names) in enumerate(cases):
        proc = run_train(*TINY, *overrides, run_dir=tmp_path / f"run{i}")
        assert_refused(proc, names)
        assert not (tmp_path / f"run{i}").exists(), names


@pytest.mark.slow
def test_a_deleted_cwd_and_undecodable_arguments_are_one_line(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    import subprocess
    import sys

    from conftest import REPO

    script = (f"import os, subprocess, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
              f"sys.exit(subprocess.run([sys.executable, {str(REPO / 'train.py')!r}]).returncode)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert_refused(proc, "cwd=", "no longer exists")
    env = {"PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0"}
    proc = run_train(run_dir=tmp_path / "caf\u00e9", env=env)
    assert_refused(proc, "hydra.run.dir=", "not text in this locale")
    assert list(tmp_path.iterdir()) == []


def test_the_preflight_carries_any_exception_past_hydra(tmp_path):
    """Hydra swallows an Exception raised in a callback (a warning); the preflight raises errors.Escaped instead."""
    from omegaconf import OmegaConf

    from echo_lstm.machinery.errors import Escaped
    from echo_lstm.machinery.preflight import Preflight

    config = compose(*TINY, run_dir=tmp_path / "run", return_hydra_config=True)
    OmegaConf.set_struct(config, False)
    config.layers = "${oc.env:ECHO_LSTM_SURELY_UNSET}"
    with pytest.raises(Escaped) as raised:
        Preflight().on_run_start(config)
    assert not isinstance(raised.value, Exception) and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- 4. finished runs
@pytest.mark.slow
def test_a_finished_run_is_read_only_to_resume(tmp_path, trained):
    run_dir = tmp_path / "finished"
    shutil.copytree(trained, run_dir)
    before = tree(run_dir)
    for extra, says in [([], "is a finished run"), (["trainer.max_epochs=2"], "has nothing left to train")]:
        proc = run_train(f"resume={run_dir}", *extra)  # (limits that are not higher: nothing to train either)
        lines = [x for x in proc.stderr.splitlines() if x.startswith("echo-lstm: ")]
        assert proc.returncode == 0 and len(lines) == 1 and says in lines[0], proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
        assert tree(run_dir) == before  # the results stand, byte for byte


@pytest.mark.slow
def test_a_run_killed_before_its_result_recovers_it_on_resume(tmp_path, trained):
    import json

    run_dir = received(tmp_path, trained)  # its last checkpoint is the final one; result.json was never written
    proc = run_train(f"resume={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["step"] == 120 and 0.0 < result["metrics"]["val/acc"] <= 1.0
    assert result["stop_reason"] == "trainer.max_epochs=2" and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- 4. sweep job dirs
@pytest.mark.slow
def test_jobs_that_would_share_a_dir_or_leave_the_sweep_are_refused(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("layers=1,2", *TINY, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
                     "hydra.sweep.subdir=same", multirun=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(line) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert line[0].startswith("error: hydra.sweep.subdir=") and "each job needs its own dir" in line[0]
    job0 = sweep / "same"  # job 0's files, not overwritten by job 1's
    assert (job0 / ".hydra" / "overrides.yaml").read_text().splitlines()[0] == "- layers=1"
    assert len(list(job0.glob("events.out.tfevents.*"))) == 1 and (job0 / "result.json").is_file()
    for subdir in ["../outside", "/tmp/echo-lstm-abs", "."]:
        proc = run_train("layers=1,2", *TINY, f"hydra.sweep.dir={tmp_path}/s2", f"hydra.sweep.subdir={subdir}",
                         multirun=True)
        assert_refused(proc, "hydra.sweep.subdir=", "must be a relative path inside its dir")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"], subdir
    assert not Path("/tmp/echo-lstm-abs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_hydra_files_never_go_outside_the_run_dir(tmp_path, multirun):
    (tmp_path / "config.yaml").write_text("the user's own config\n")
    before = tree(tmp_path)
    where = f"hydra.sweep.dir={tmp_path}/sweep" if multirun else f"hydra.run.dir={tmp_path}/run"
    for value in ["..", "../..", "/tmp", "a/../.."]:
        proc = run_train(*TINY, where, f"hydra.output_subdir={value}", multirun=multirun)
        assert_refused(proc, f"hydra.output_subdir={value!r}" if value != "/tmp" else "hydra.output_subdir=")
        assert tree(tmp_path) == before and sorted(tmp_path.iterdir()) == [tmp_path / "config.yaml"]


@pytest.mark.slow
def test_a_running_sweep_job_cannot_be_resumed_beside_itself(tmp_path):
    import subprocess
    import sys
    import time

    from conftest import REPO

    sweep = tmp_path / "sweep"
    live = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", "data.total_series_length=20000",
                             "trainer.max_epochs=50", "callbacks.early_stopping=null", "checkpoint.every_n_steps=40",
                             "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(sweep.glob("*/checkpoints/last.ckpt")):
            assert live.poll() is None and time.time() < deadline
            time.sleep(0.05)
        job = next(sweep.glob("*/checkpoints/last.ckpt")).parent.parent
        assert_refused(run_train(f"resume={job}"), "resume=", "is in use by a live run", f"pid {live.pid}")
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------------- 5. stopping sweeps
def live_group_members(pgid: int) -> list[int]:
    """The processes of a process group that are still alive (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill-parent"])
def test_ctrl_c_of_a_parallel_sweep_ends_every_worker_and_says_what_was_kept(tmp_path, how):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    sweep = tmp_path / "sweep"
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")  # files: a stray worker cannot hang us
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", "layers=1,2,3", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "data.total_series_length=20000", "trainer.max_epochs=50",
                             "callbacks.early_stopping=null", "checkpoint.every_n_steps=40",
                             f"hydra.sweep.dir={sweep}"], cwd=REPO, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 180
        while len(list(sweep.glob("*/checkpoints/last.ckpt"))) < 2:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        (os.killpg if how == "ctrl-c" else os.kill)(proc.pid, signal.SIGINT)  # a terminal signals the group
        proc.wait(timeout=60)
        time.sleep(0.5)
        assert live_group_members(proc.pid) == []  # no worker outlives the sweep
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err.seek(0)
    stderr = err.read()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT: 0 of 3 jobs finished, 2 stopped with a checkpoint kept, 1 not "
                           "started"), last
    assert "nothing was kept" not in stderr
    kept = sorted(p.parent.parent.name for p in sweep.glob("*/checkpoints/last.ckpt"))
    assert kept == ["0_layers=1", "1_layers=2"] and not (sweep / "2_layers=3").exists()
    assert all(f"/{sweep.name}/{name}'" in last.replace("'\"'\"'", "'") for name in kept), last
    import csv

    with open(sweep / "summary.csv") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["not started", "stopped", "stopped"]



# ---------------------------------------------------------------------------------------------- the small ones
@pytest.mark.slow
def test_a_reader_that_leaves_is_no_traceback(tmp_path):
    """`python train.py | head -1`: the pipe closes before the summary; the run's files stand, exit 141, quiet."""
    import subprocess
    import sys

    from conftest import REPO

    for args in [["--help"], [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/run"]]:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
        os.close(write)
        assert proc.returncode == 141, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "run" / "result.json").is_file()


@pytest.mark.slow
def test_resume_with_a_run_dir_blames_the_right_setting(tmp_path, trained):
    assert_refused(run_train(f"resume={tmp_path}/missing", f"hydra.run.dir={tmp_path}/x"), "resume=",
                   "no such run directory")
    run_dir = received(tmp_path, trained)
    assert_refused(run_train(f"resume={run_dir}", f"hydra.run.dir={tmp_path}/x"), f"hydra.run.dir='{tmp_path}/x'",
                   "cannot be set with resume=: it is the resumed run's own dir")
    assert_refused(run_train(f"resume={run_dir}", "hydra.output_subdir=elsewhere"), "hydra.output_subdir=",
                   "cannot be set with resume=")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["received"]



@pytest.mark.slow
def test_a_failed_optuna_trial_is_recorded_and_the_search_goes_on(tmp_path):
    import csv
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip('the optional Optuna sweeper is not installed: pip install -e ".[optuna]"')
    search = tmp_path / "conf" / "hparams_search"
    search.mkdir(parents=True)
    (search / "failing.yaml").write_text("# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n"
                                         "    n_trials: 3\n    params:\n      layers: choice(0)\n")  # all invalid
    proc = run_train(f"hydra.searchpath=[file://{tmp_path}/conf]", "hparams_search=failing", *TINY,
                     "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/sweep")
    assert "Traceback" not in proc.stderr and "Values were told" not in proc.stderr, proc.stderr[-3000:]
    with open(tmp_path / "sweep" / "summary.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["failed"] * 3  # every trial ran and is recorded
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: 3 of 3 jobs failed")


@pytest.mark.slow
def test_ctrl_c_of_an_optuna_search_stops_it_and_its_trial_resumes_alone(tmp_path):
    import importlib.util
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip('the optional Optuna sweeper is not installed: pip install -e ".[optuna]"')
    sweep = tmp_path / "sweep"
    err = open(tmp_path / "err", "w+")
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "data.total_series_length=20000",
            "trainer.max_epochs=50", "callbacks.early_stopping=null", "checkpoint.every_n_steps=40",
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(sweep.glob("*/checkpoints/last.ckpt")):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err.seek(0)
    stderr = err.read()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT: 0 of 4 jobs finished, 1 stopped with a checkpoint kept, 3 not "
                           "started"), last
    job = next(sweep.glob("*/checkpoints/last.ckpt")).parent.parent
    from echo_lstm.machinery.errors import hydra_quote

    resumed = run_train(f"resume={hydra_quote(str(job))}", "trainer.max_epochs=1")  # that trial, not a new search
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing" in resumed.stdout and "Sweep summary" not in resumed.stdout
    assert (job / "result.json").is_file()


@pytest.mark.slow
def test_sighup_stops_a_run_with_a_line_and_a_resume_hint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "data.total_series_length=20000",
                             "trainer.max_epochs=50", "callbacks.early_stopping=null", "checkpoint.every_n_steps=40",
                             "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGHUP at step ") and "Continue with: python train.py resume=" in last, last


@pytest.mark.slow
def test_ctrl_c_while_a_parallel_sweep_starts_leaves_no_worker_and_nothing_behind(tmp_path):
    """Ctrl-C while joblib's workers are still starting: no worker outlives the sweep, one closing line, and
    nothing is kept (no job trained). (A worker interrupted inside its own start-up imports may still print
    Python's KeyboardInterrupt traceback before this app's code runs in it: not asserted here.)"""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    sweep = tmp_path / "sweep"
    err = open(tmp_path / "err", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", "layers=1,2,3", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", *TINY, f"hydra.sweep.dir={sweep}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (sweep / "multirun.yaml").exists():  # claimed; the workers are being started
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        time.sleep(0.5)
        assert live_group_members(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err.seek(0)
    stderr = err.read()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGINT"), stderr[-3000:]
    assert not list(sweep.glob("*/checkpoints/last.ckpt"))


def test_a_job_dir_is_claimed_as_hydra_names_it(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from echo_lstm.machinery import rundir
    from echo_lstm.machinery.errors import ConfigError

    root = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    try:
        assert rundir.claimed_job_dir("0_layers=1", _root_=root) == "0_layers=1"
        assert rundir.claimed_job_dir("0_layers=1", _root_=root) == "0_layers=1"  # resolved again: claimed once
        assert (tmp_path / "0_layers=1" / ".lock").is_file()
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "train.log").write_text("another job's\n")
        for subdir, why in [("taken", "each job needs its own dir"), ("../out", "without '..'"),
                            (str(tmp_path / "abs"), "relative path"), (".", "relative path")]:
            with pytest.raises(ConfigError, match=why):
                rundir.claimed_job_dir(subdir, _root_=root)
        (tmp_path / "taken" / ".slurm_job_id").write_text("77\n")  # a job SLURM requeued continues in its dir
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        assert rundir.claimed_job_dir("taken", _root_=root) == "taken"
        assert (tmp_path / "taken" / "train.log").read_text() == "another job's\n"
    finally:
        for claim in rundir.jobs.values():
            claim.release()
        rundir.jobs.clear()
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "out").exists()
