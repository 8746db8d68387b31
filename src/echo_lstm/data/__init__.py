"""The echo task's data: the series (`series.py`, light) and the Lightning data module that hands them out in
blocks of chunks (`echo.py`)."""

from typing import Any

from echo_lstm.data.series import EVAL, TRAIN, VAL, echo_series, echo_stream, to_chunks

__all__ = ["EVAL", "TRAIN", "VAL", "ChunkBlocks", "EchoDataModule", "echo_series", "echo_stream", "to_chunks"]


def __getattr__(name: str) -> Any:  # the module with Lightning in it loads on first use
    if name in ("ChunkBlocks", "EchoDataModule"):
        from echo_lstm.data import echo

        return getattr(echo, name)
    raise AttributeError(f"module 'echo_lstm.data' has no attribute {name!r}")
