"""echo-lstm: a stacked LSTM that learns to echo its input, trained with truncated BPTT.

`from echo_lstm import EchoLSTM` works; the heavy modules load on first use, so the config layer (and
`python train.py --help`) stays fast.
"""

from typing import Any

__all__ = ["EchoLSTM", "EchoDataModule", "StackedRNN"]


def __getattr__(name: str) -> Any:
    if name == "EchoLSTM":
        from echo_lstm.models.module import EchoLSTM

        return EchoLSTM
    if name == "StackedRNN":
        from echo_lstm.models.net import StackedRNN

        return StackedRNN
    if name == "EchoDataModule":
        from echo_lstm.data.echo import EchoDataModule

        return EchoDataModule
    raise AttributeError(f"module 'echo_lstm' has no attribute {name!r}")
