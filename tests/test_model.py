"""The network and its training step: packed state shapes, the carried state, truncation of gradients, validation
from a zero state. Each test runs the real code it guards (the network, `training_step` inside a real Trainer)."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import TINY, compose, make_datamodule, make_model

from echo_lstm.metrics import position_masks


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_state_shape_follows_layers(layers):
    model = make_model(f"layers={layers}", "model.net.state_size=6")
    logits, state = model(torch.randint(0, 2, (3, 15)))
    assert logits.shape == (3, 15, 2)
    assert state.shape == (layers, 2, 3, 6)  # [layers, cell/hidden, streams, state_size]
    assert model.net.rnn.num_layers == layers


@pytest.mark.parametrize("cell,parts", [("rnn", 1), ("gru", 1), ("lstm", 2)])
def test_state_shapes_per_cell(cell, parts):
    model = make_model("layers=2", "model.net.state_size=3", f"model.net.cell={cell}")
    logits, state = model(torch.randint(0, 2, (5, 15)))
    assert logits.shape == (5, 15, 2) and state.shape == (2, parts, 5, 3)
    _, again = model(torch.randint(0, 2, (5, 15)), state)  # the packed state feeds back in
    assert again.shape == state.shape


def test_input_dtype_and_state_round_trip():
    model = make_model()
    x = torch.randint(0, 2, (5, 15))
    logits_int, _ = model(x)
    logits_float, _ = model(x.float())
    assert torch.allclose(logits_int, logits_float)
    # Running a series in two chunks with the state carried equals running it whole.
    whole, _ = model(torch.cat([x, x], dim=1))
    first, s1 = model(x)
    second, _ = model(x, s1)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_packed_state_order_is_cell_then_hidden():
    model = make_model("layers=2")
    x = torch.randint(0, 2, (2, 7))
    out, (h, c) = model.net.rnn(x.float().unsqueeze(-1))
    _, state = model(x)
    assert torch.equal(state[:, 0], c) and torch.equal(state[:, 1], h)
    assert torch.allclose(state[-1, 1], out[:, -1])  # the top layer's hidden state is the last output


def test_forget_bias_is_added_to_the_forget_gate_only():
    torch.manual_seed(0)
    plain = make_model("layers=2")
    torch.manual_seed(0)
    biased = make_model("layers=2", "model.net.forget_bias=1.0")
    diff = biased.net.rnn.bias_ih_l1 - plain.net.rnn.bias_ih_l1
    assert torch.allclose(diff, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))


def test_boundary_mask_marks_first_echo_steps_of_each_chunk():
    valid, boundary = position_masks(0, 3, 5, echo_step=2)
    assert boundary.squeeze(1).tolist() == [[False] * 5, [True, True, False, False, False],
                                            [True, True, False, False, False]]
    assert valid.squeeze(1)[0].tolist() == [False, False, True, True, True]
    # echo_step longer than a chunk: the whole chunk depends on earlier chunks.
    _, boundary = position_masks(4, 1, 5, echo_step=7)
    assert boundary.all()


# ---------------------------------------------------------------------------------------------- training_step
def fit_and_spy(*overrides: str, max_steps: int = 12) -> list:
    """Fit a tiny model in a real Trainer and record, for every chunk `training_step` runs, the state it hands to
    the network (torch's (h, c)) and the state the network returned."""
    model = make_model(*TINY, *overrides)
    calls = []
    run = model.net.run

    def spy(inputs, hidden):
        logits, out = run(inputs, hidden)
        calls.append((hidden, out))
        return logits, out

    model.net.run = spy
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=make_datamodule(*TINY, *overrides))
    assert trainer.global_step == max_steps == len(calls)  # one optimizer step per chunk
    return calls


def test_training_step_carries_the_state_from_chunk_to_chunk_detached():
    calls = fit_and_spy()
    for (given, _), (_, previous) in zip(calls[1:], calls[:-1], strict=True):
        assert given is not None
        for a, b in zip(given, previous, strict=True):
            assert torch.equal(a, b.detach())  # the previous chunk's final state: carried ...
            assert a.grad_fn is None and not a.requires_grad  # ... as a constant: gradients stop at the boundary
    assert any(b.grad_fn is not None for b in calls[0][1])  # (inside a chunk, the graph exists)


def test_training_step_with_carry_state_false_starts_every_chunk_from_zeros():
    calls = fit_and_spy("model.carry_state=false")
    assert all(given is None for given, _ in calls)  # torch starts from zeros


def test_validation_starts_from_a_zero_state_whatever_the_training_state():
    model = make_model(*TINY)
    dm = make_datamodule(*TINY)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    baseline = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    model.train_state = torch.randn(3, 2, 2, 4) * 5  # a carried training state that must not leak in
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    series = dm.val_series()
    logits, _ = model.net(series["x"], None)
    by_hand = F.cross_entropy(logits.reshape(-1, 2), series["y"].reshape(-1)).item()
    assert baseline == pytest.approx(by_hand, abs=1e-6) and again == pytest.approx(by_hand, abs=1e-6)


def test_gradient_clipping_applies_lightnings_meaning_per_chunk():
    # trainer.gradient_clip_val clips each chunk's gradients before its step: the direct path and Lightning's
    # own clip_gradients (model.per_chunk_hooks=true) give the same weights, and clipping changes them.
    from echo_lstm.training import train

    weights = {}
    for name, overrides in {"direct": [], "lightning": ["model.per_chunk_hooks=true"], "none": []}.items():
        clip = [] if name == "none" else ["trainer.gradient_clip_val=0.01"]
        run_dir = f"/tmp/echo-lstm-test-clip-{name}"
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        train(compose(*TINY, *overrides, *clip, "trainer.max_epochs=1", "figure.every_n_steps=0", run_dir=run_dir))
        weights[name] = torch.load(f"{run_dir}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
        shutil.rmtree(run_dir, ignore_errors=True)
    for key, value in weights["direct"].items():
        assert torch.equal(value, weights["lightning"][key]), key
    assert any(not torch.equal(v, weights["none"][k]) for k, v in weights["direct"].items())


def test_early_stopping_needs_both_accuracies_at_the_target():
    # Early stopping watches val/min_acc = min(val/acc, val/boundary_acc): an untrained network's two accuracies
    # differ, and the monitor must be the lower one (with the max, a network that echoes only inside chunks would
    # stop as soon as val/acc reached the target).
    model = make_model(*TINY)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=make_datamodule(*TINY), verbose=False)[0]
    assert metrics["val/acc"] != metrics["val/boundary_acc"]
    assert metrics["val/min_acc"] == min(metrics["val/acc"], metrics["val/boundary_acc"])
    stopping = compose().callbacks.early_stopping
    assert (stopping.monitor, stopping.mode, stopping.stopping_threshold) == ("val/min_acc", "max", 0.999)
