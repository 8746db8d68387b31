"""Devices and DDP: streams are the unit of parallelism, and the result does not depend on the process count."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, compose, event_files, run_script, run_train, scalars

from echo_lstm.data import EchoDataModule

DDP2 = ["device=ddp_cpu", "device.devices=2"]
# TINY with 4 streams, so that 2 processes get 2 each.
SMALL = [o for o in TINY if not o.startswith("data.batch_size")] + ["data.batch_size=4"]


def rank_datamodule(rank: int, world: int) -> EchoDataModule:
    dm = EchoDataModule(total_series_length=800, batch_size=4, truncated_backprop_length=5, echo_step=3,
                        chunks_per_batch=3, val_series_length=200, seed=3)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))
    return dm


def test_each_rank_owns_disjoint_streams_in_order():
    whole = rank_datamodule(0, 1)
    ranks = [rank_datamodule(r, 2) for r in range(2)]
    assert [list(dm.local_streams()) for dm in ranks] == [[0, 1], [2, 3]]
    full_x, _ = whole.make_epoch(0)
    for r, dm in enumerate(ranks):
        blocks = list(dm.train_dataloader())
        x = torch.cat([b["x"] for b in blocks])  # every chunk of the epoch, in order, for this rank's streams
        assert torch.equal(x, full_x[:, 2 * r : 2 * r + 2])
        assert torch.equal(dm.val_series()["x"], whole.val_series()["x"][2 * r : 2 * r + 2])


@pytest.mark.learning
@pytest.mark.slow
def test_ddp_cpu_learns_with_one_run_dir_one_event_file_one_checkpoint(tmp_path, ok):
    # The README's command, exactly as written (from a fresh directory).
    proc = ok(run_script("train.py", "device=ddp_cpu", "data.batch_size=4", cwd=tmp_path))
    assert proc.stdout.count("echo-lstm: learned the echo") == 1  # the summary is printed once
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()  # one run dir: no per-rank Hydra dirs anywhere
    metrics = scalars(run_dir)
    assert metrics["val/boundary_acc"][-1][1] >= 0.99
    assert len(event_files(tmp_path)) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run_dir / "checkpoints").glob("best*.ckpt"))) == 1
    assert not list(run_dir.glob("*rank*"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["echo_train_state"].shape == (3, 2, 4, 4)  # all 4 streams, gathered from both ranks


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer,tolerance",
    [
        # Plain SGD shows the all-reduce's float rounding itself (~1e-7). Adagrad divides each update by the
        # root of its accumulated squared gradients, which magnifies that rounding for parameters whose
        # gradients are tiny: after 60 steps the largest difference seen is ~2e-4.
        (["optimizer=sgd", "optimizer.momentum=0"], 1e-6),
        ([], 1e-3),
    ],
    ids=["sgd", "adagrad"],
)
def test_one_process_and_two_processes_end_with_the_same_weights(tmp_path, ok, optimizer, tolerance):
    from echo_lstm.training import train

    train(compose(*SMALL, *optimizer, "seed=11", run_dir=tmp_path / "one"))  # one process: in this one
    ok(run_train(*SMALL, *optimizer, *DDP2, "seed=11", run_dir=tmp_path / "two"))
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert one["global_step"] == two["global_step"] == 60  # 150 steps per stream, 30 chunks x 2 epochs
    diff = max((one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    print(f"max |w_1proc - w_2proc| = {diff:.3g}")
    assert diff < tolerance
    state_diff = (one["echo_train_state"] - two["echo_train_state"]).abs().max().item()
    assert state_diff < tolerance * 10
    v1, v2 = scalars(tmp_path / "one"), scalars(tmp_path / "two")
    assert [s for s, _ in v1["val/acc"]] == [s for s, _ in v2["val/acc"]]
    for tag in ("val/acc", "val/boundary_acc", "val/loss"):
        assert [v for _, v in v1[tag]] == pytest.approx([v for _, v in v2[tag]], abs=1e-4), tag


@pytest.mark.slow
def test_multirun_of_ddp_jobs_gives_each_job_its_own_dir(tmp_path, ok):
    from echo_lstm.machinery.errors import hydra_quote

    sweep = tmp_path / "a \"quoted\" sweep's dir"  # the ranks find their job's dir whatever its name
    ok(run_train("layers=1,2", *SMALL, *DDP2, f"hydra.sweep.dir={hydra_quote(str(sweep))}", multirun=True))
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0_layers=1", "1_layers=2"]
    for job, layers in zip(jobs, (1, 2), strict=True):
        assert len(event_files(job)) == 1
        assert (job / "checkpoints" / "last.ckpt").is_file()
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["hyper_parameters"]["net"]["layers"] == layers and ckpt["global_step"] == 60


@pytest.mark.slow
def test_ranks_of_a_job_whose_config_asks_for_a_multirun_run_only_their_job(tmp_path, ok):
    # As hparams_search=optuna does: a config group that sets hydra.mode=MULTIRUN (here from a config dir of the
    # user's, which the ranks must find too). Rank 1 once started an Optuna sweep of its own in <cwd>/outputs.
    group = tmp_path / "conf" / "search"
    group.mkdir(parents=True)
    (group / "multi.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    sweep = tmp_path / "sweep"
    ok(run_train("+search=multi", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *SMALL, *DDP2,
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    assert not (tmp_path / "outputs").exists()  # no rank ran a sweep of its own
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
    assert (job / "train.log").read_text().count("step 16 (epoch 0)") == 1  # one log: rank 0's


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path, ok):
    sweep = tmp_path / "sweep"
    ok(run_train("hydra/launcher=submitit_local", "layers=2,3", *TINY, f"hydra.sweep.dir={sweep}", multirun=True))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_layers=2", "1_layers=3"]
    assert all((sweep / job / "checkpoints" / "last.ckpt").is_file() for job in jobs)


def test_submitit_slurm_config_matches_the_device(ok):
    proc = ok(run_train("--cfg", "hydra", "hydra/launcher=slurm", timeout=60))
    assert "SlurmLauncher" in proc.stdout
    for line in ("tasks_per_node: ${device.devices}", "nodes: ${device.num_nodes}", "signal_delay_s: 120"):
        assert line in proc.stdout, line
    # Resolved against the job's config, one SLURM task per device on every node, one GPU each for a GPU job:
    cfg = compose("hydra/launcher=slurm", "device=multi_gpu", "device.devices=4", "device.num_nodes=2",
                  return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher._target_ == "hydra_plugins.echo_lstm_slurm.launcher.SlurmLauncher"
    cpu = compose("hydra/launcher=slurm", "device=ddp_cpu", return_hydra_config=True).hydra.launcher
    assert (cpu.gpus_per_node, cpu.tasks_per_node, cpu.nodes) == (None, 2, 1)  # no GPU for a CPU job


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_gpu_run_learns(tmp_path, ok, precision):
    run_dir = tmp_path / "run"
    ok(run_train("device=gpu", f"device.precision={precision}", "trainer.enable_progress_bar=false",
                 run_dir=run_dir))
    assert scalars(run_dir)["val/boundary_acc"][-1][1] >= 0.99


@pytest.mark.slow
def test_a_killed_rank_is_named_with_how_to_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *DDP2, "data.batch_size=4",
                             "data.total_series_length=20000", "trainer.max_epochs=50", "callbacks.early_stopping=null",
                             "checkpoint.every_n_steps=40", "trainer.enable_progress_bar=false",
                             f"hydra.run.dir={run_dir}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    children = (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
    ranks = [int(c) for c in children if "train.py" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(ranks) == 1
    os.kill(ranks[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 5 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"error: DDP process of rank 1 (pid {ranks[0]}) was killed by SIGKILL")
    assert "is kept; continue with: python train.py resume=" in lines[0]
