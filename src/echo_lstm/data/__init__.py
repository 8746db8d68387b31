"""The echo task's data: random bit streams, their echo, cut into chunks (`echo.py`)."""

from echo_lstm.data.echo import TRAIN, VAL, ChunkBlocks, EchoDataModule, echo_series, echo_stream, to_chunks

__all__ = ["TRAIN", "VAL", "ChunkBlocks", "EchoDataModule", "echo_series", "echo_stream", "to_chunks"]
