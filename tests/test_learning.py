"""The model learns the echo, and the training loop really carries the state: proved where it happens, by the
training-time boundary accuracy (targets in the previous chunk, which only a carried state can know while
training), not by validation (which always carries the state, see echo_lstm/metrics.py)."""

import pytest
import torch
from conftest import TINY, compose

from echo_lstm.training import train

pytestmark = pytest.mark.learning


def run(tmp_path, name: str, *overrides: str):
    # Seed 1 learns the echo at step 128-256 on every CPU measured (docs/research.md, "How robust"; the default
    # seed at 128-1460 over 4 CPUs' kernels): the budget of 1024 steps is 4x the slowest.
    cfg = compose("trainer.enable_progress_bar=false", "figure.every_n_steps=0", "callbacks.early_stopping=null",
                  "seed=1", "trainer.max_steps=1024", *overrides, run_dir=tmp_path / name)
    return train(cfg)


def test_carried_state_is_what_learns_the_boundary_while_training(tmp_path):
    carried = run(tmp_path, "carried")
    reset = run(tmp_path, "reset", "model.carry_state=false")
    # The training loop's boundary accuracy: only a carried state knows the previous chunk's inputs.
    assert carried.metrics["train/boundary_acc"] >= 0.99, carried.metrics
    assert reset.metrics["train/boundary_acc"] < 0.75, reset.metrics
    assert carried.reached is not None and carried.reached <= 1024  # train/steps_to_echo: learned while training
    assert reset.reached is None  # never, however long: the window of train/boundary_acc stays at chance
    # Inside chunks both learn the echo; and at validation, where the state is always carried, the network trained
    # with resets echoes across boundaries too (its delay line works from any state): val/* cannot tell them apart.
    assert reset.metrics["train/acc"] > 0.8
    assert carried.metrics["val/boundary_acc"] >= 0.99 and reset.metrics["val/boundary_acc"] >= 0.9
    from echo_lstm import metrics

    # Every metric the run computes is registered, and every registered name (not a pattern) is computed.
    assert [m for m in carried.metrics if metrics.find(m) is None] == []
    assert {m for m in metrics.NAMES if "*" not in m} <= set(carried.metrics)


def test_direct_and_lightning_optimizer_paths_are_bitwise_identical(tmp_path):
    # One process at full precision runs each chunk's backward/step directly; model.per_chunk_hooks=true runs them
    # through Lightning's manual_backward/LightningOptimizer.step. Same numbers, same step count.
    results = []
    for hooks in ("false", "true"):
        run_dir = tmp_path / hooks
        train(compose(*TINY, f"model.per_chunk_hooks={hooks}", "figure.every_n_steps=0", run_dir=run_dir))
        results.append(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True))
    direct, lightning = results
    assert direct["global_step"] == lightning["global_step"] == 120  # 60 chunks x 2 epochs
    for key, value in direct["state_dict"].items():
        assert torch.equal(value, lightning["state_dict"][key]), key
    assert torch.equal(direct["echo_train_state"], lightning["echo_train_state"])
