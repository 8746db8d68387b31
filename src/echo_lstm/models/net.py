"""The recurrent network: a plain `nn.Module` with the tutorial's packed state interface.

`StackedRNN(x, state) -> (logits, state)`: x is a chunk `[streams, T]` of 0/1, `state` is None (zeros) or ONE
tensor `[layers, parts, streams, state_size]` (LSTM: parts 0 = cell state, 1 = hidden state, the tutorial's
order; GRU / RNN: 1 part), and the state it returns is packed the same way, ready for the next chunk. Layer 0
takes the 1-dimensional input, higher layers the hidden state below; logits come from the top layer's output
through one linear layer (state_size x 2), as in tutorial part 4.

To train another network, write a module with the same interface (`forward(x, state)`, `initial_state`,
`run`, `pack`, `unpack`) and point `model.net._target_` at it (see the README, "Where to change what").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from echo_lstm.machinery.errors import check
from echo_lstm.models.cells import CELLS


class StackedRNN(nn.Module):
    def __init__(self, cell: str, layers: int, state_size: int, dropout: float = 0.0, forget_bias: float = 0.0):
        super().__init__()
        check(cell in CELLS, "cell", cell, f"must be one of {', '.join(CELLS)}")
        check(layers >= 1, "layers", layers, "must be an integer >= 1")
        check(state_size >= 1, "state_size", state_size, "must be an integer >= 1")
        check(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        self.cell, self.layers, self.state_size, self.parts = cell, layers, state_size, CELLS[cell]
        self.rnn = getattr(nn, cell.upper())(
            input_size=1, hidden_size=state_size, num_layers=layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,  # between layers; the top layer's output dropout is below
        )
        self.output_dropout = nn.Dropout(dropout) if dropout else None
        self.head = nn.Linear(state_size, 2)
        if cell == "lstm" and forget_bias:
            with torch.no_grad():  # gate order i, f, g, o: TensorFlow's LSTMCell adds this to f
                for layer in range(layers):
                    getattr(self.rnn, f"bias_ih_l{layer}")[state_size : 2 * state_size] += forget_bias

    def initial_state(self, streams: int) -> torch.Tensor:
        return self.head.weight.new_zeros(self.layers, self.parts, streams, self.state_size)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [streams, T] of 0/1 (any dtype); state: None or packed. Returns logits [streams, T, 2] and the
        final state, packed."""
        logits, hidden = self.run(self.inputs(x), self.unpack(state))
        return logits, self.pack(hidden)

    # The training loop works with torch's own state format inside a block of chunks (no packing per chunk).
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """[streams, T] (or [..., streams, T]) of 0/1 -> float inputs [..., streams, T, 1]."""
        return x.to(self.head.weight.dtype).unsqueeze(-1)

    def run(self, inputs: torch.Tensor, hidden: Any) -> tuple[torch.Tensor, Any]:
        """One chunk, inputs [streams, T, 1], state in torch's format ((h, c) for LSTM, else h, or None)."""
        out, hidden = self.rnn(inputs, hidden)
        if self.output_dropout is not None:
            out = self.output_dropout(out)
        return self.head(out), hidden

    def unpack(self, state: torch.Tensor | None) -> Any:
        if state is None:
            return None
        if self.cell == "lstm":
            return state[:, 1].contiguous(), state[:, 0].contiguous()  # torch wants (h, c)
        return state[:, 0].contiguous()

    def pack(self, hidden: Any) -> torch.Tensor:
        if self.cell == "lstm":
            h, c = hidden
            return torch.stack((c, h), dim=1)
        return hidden.unsqueeze(1)

    @staticmethod
    def detach(hidden: Any) -> Any:
        """Truncate: the next chunk starts from the state's value; its gradients stop here."""
        return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
