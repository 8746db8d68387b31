"""The model really learns the echo, and only a carried state gets the chunk boundaries right."""

import torch
import torch.nn.functional as F
from conftest import compose

from echo_lstm import EchoLSTM
from echo_lstm.data import EchoDataModule
from echo_lstm.model import masked_acc, position_masks


def chunked_accuracy(model, x, y, T, echo_step, carry: bool):
    """(acc, boundary_acc) over a series run chunk by chunk, carrying the state or resetting it."""
    state, preds = None, []
    with torch.no_grad():
        for k in range(x.shape[1] // T):
            logits, new_state = model(x[:, k * T : (k + 1) * T], state)
            state = new_state if carry else None
            preds.append(logits.argmax(-1))
    n = len(preds)
    preds = torch.stack(preds)  # [chunks, streams, T]
    ys = y[:, : n * T].reshape(y.shape[0], n, T).transpose(0, 1)
    valid, boundary = position_masks(0, n, T, echo_step)
    correct = preds == ys
    return float(masked_acc(correct, valid)), float(masked_acc(correct, boundary))


def test_trained_model_learns_echo_through_the_carried_state(tmp_path):
    from echo_lstm.training import train

    cfg = compose("trainer.enable_progress_bar=false", "trainer.max_steps=1500", run_dir=tmp_path)
    boundary_acc = train(cfg)
    assert boundary_acc >= 0.99

    model = EchoLSTM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt").eval()
    assert model.train_state is not None and model.train_state.grad_fn is None  # carried, detached
    val = EchoDataModule(**dict(cfg.data)).val_series()
    carried = chunked_accuracy(model, val["x"], val["y"], 15, 3, carry=True)
    reset = chunked_accuracy(model, val["x"], val["y"], 15, 3, carry=False)
    assert carried[1] >= 0.99
    assert reset[1] < 0.75  # at boundaries the answer lies in the previous chunk: reset = guessing
    assert reset[0] > 0.8  # inside chunks the reset model still echoes


def test_model_that_resets_every_chunk_cannot_learn_the_boundary():
    torch.manual_seed(0)
    dm = EchoDataModule(total_series_length=50000, batch_size=5, truncated_backprop_length=15, echo_step=3,
                        chunks_per_batch=1, val_series_length=5000, seed=1)
    model = EchoLSTM(layers=3, state_size=4)
    opt = model.configure_optimizers()
    x, y = dm.make_epoch(0)
    for k in range(900):  # longer than the carried model needs
        logits, _ = model(x[k % len(x)], None)  # state reset at every chunk
        loss = F.cross_entropy(logits.reshape(-1, 2), y[k % len(y)].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = dm.val_series()
    acc, boundary_acc = chunked_accuracy(model, val["x"], val["y"], 15, 3, carry=False)
    assert boundary_acc < 0.75


def test_direct_and_lightning_optimizer_paths_are_bitwise_identical(tmp_path):
    # One process at full precision runs each chunk's backward/step directly; model.per_chunk_hooks=true
    # runs them through Lightning's manual_backward/LightningOptimizer.step. Same numbers, same step count.
    from conftest import TINY

    from echo_lstm.training import train

    results = []
    for hooks in ("false", "true"):
        run_dir = tmp_path / hooks
        train(compose(*TINY, f"model.per_chunk_hooks={hooks}", run_dir=run_dir))
        results.append(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True))
    direct, lightning = results
    assert direct["global_step"] == lightning["global_step"] == 120  # 60 chunks x 2 epochs
    for key, value in direct["state_dict"].items():
        assert torch.equal(value, lightning["state_dict"][key]), key
    assert torch.equal(direct["echo_train_state"], lightning["echo_train_state"])
