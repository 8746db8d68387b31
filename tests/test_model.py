"""The model: packed state shapes, the carried state, truncation of gradients."""

import pytest
import torch

from echo_lstm import EchoLSTM
from echo_lstm.model import position_masks


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_state_shape_follows_layers(layers):
    model = EchoLSTM(layers=layers, state_size=6)
    x = torch.randint(0, 2, (3, 15))
    logits, state = model(x)
    assert logits.shape == (3, 15, 2)
    assert state.shape == (layers, 2, 3, 6)  # [layers, cell/hidden, streams, state_size]
    assert model.rnn.num_layers == layers


def test_input_dtype_and_state_round_trip():
    model = EchoLSTM(layers=3)
    x = torch.randint(0, 2, (5, 15))
    logits_int, state = model(x)
    logits_float, _ = model(x.float())
    assert torch.allclose(logits_int, logits_float)
    # Running a series in two chunks with the state carried equals running it whole.
    whole, _ = model(torch.cat([x, x], dim=1))
    first, s1 = model(x)
    second, _ = model(x, s1)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_packed_state_order_is_cell_then_hidden():
    model = EchoLSTM(layers=2, state_size=4)
    x = torch.randint(0, 2, (2, 7))
    out, (h, c) = model.rnn(x.float().unsqueeze(-1))
    _, state = model(x)
    assert torch.equal(state[:, 0], c) and torch.equal(state[:, 1], h)
    assert torch.allclose(state[-1, 1], out[:, -1])  # the top layer's hidden state is the last output


def test_forget_bias_is_added_to_the_forget_gate_only():
    torch.manual_seed(0)
    plain = EchoLSTM(layers=2, state_size=4)
    torch.manual_seed(0)
    biased = EchoLSTM(layers=2, state_size=4, forget_bias=1.0)
    diff = biased.rnn.bias_ih_l1 - plain.rnn.bias_ih_l1
    assert torch.allclose(diff, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))


def test_boundary_mask_marks_first_echo_steps_of_each_chunk():
    valid, boundary = position_masks(0, 3, 5, echo_step=2)
    assert boundary.squeeze(1).tolist() == [[False] * 5, [True, True, False, False, False],
                                            [True, True, False, False, False]]
    assert valid.squeeze(1)[0].tolist() == [False, False, True, True, True]
    # echo_step longer than a chunk: the whole chunk depends on earlier chunks.
    _, boundary = position_masks(4, 1, 5, echo_step=7)
    assert boundary.all()


def test_gradients_stop_at_the_chunk_boundary():
    # The carried state enters the next chunk as a constant: the gradient of chunk 2's loss is the same
    # whether or not chunk 1's graph still exists behind the state.
    torch.manual_seed(0)
    model = EchoLSTM(layers=2, state_size=4)
    x1, x2 = torch.randint(0, 2, (3, 15)), torch.randint(0, 2, (3, 15))
    _, state = model(x1)
    assert state.requires_grad
    logits, _ = model(x2, state.detach())
    logits.sum().backward()
    truncated = model.rnn.weight_hh_l0.grad.clone()
    model.zero_grad()
    logits, _ = model(x2, state)  # not detached: the gradient would flow into chunk 1
    logits.sum().backward()
    assert not torch.allclose(model.rnn.weight_hh_l0.grad, truncated)
