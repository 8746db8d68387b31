"""The recurrent cells the network can stack, by name, with the number of parts of their state.

Light (no torch) so that config checks can list them; `net.StackedRNN` builds `torch.nn.<NAME.upper()>`.
The packed state is `[layers, parts, streams, state_size]`: LSTM has 2 parts (0 = cell state, 1 = hidden
state, the tutorial's order), GRU and the plain tanh RNN have 1.
"""

CELLS: dict[str, int] = {"lstm": 2, "gru": 1, "rnn": 1}
