"""The echo series itself: random bit streams and their echo, cut into chunks. numpy + torch only (no Lightning),
so that eval.py and scripts can make series without importing Lightning.

Each stream is an independent random bit series whose bits depend only on (seed, split, epoch, stream index): the
data are reproducible, new every epoch, and a stream's bits do not depend on how many streams or processes there are.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN, VAL, EVAL = 0, 1, 2  # the splits: training, the fixed validation series, eval.py's series


def echo_stream(seed: int, split: int, epoch: int, stream: int, length: int, echo_step: int):
    """One stream: random bits x (p=0.5) and the target y = x delayed by echo_step (first targets 0)."""
    rng = np.random.default_rng([seed, split, epoch, stream])
    x = rng.integers(0, 2, size=length, dtype=np.int64)
    y = np.zeros_like(x)
    if echo_step < length:
        y[echo_step:] = x[: length - echo_step]
    return x, y


def echo_series(seed: int, split: int, epoch: int, streams: range, length: int, echo_step: int):
    """Streams stacked as tensors x, y of shape [len(streams), length] (int64)."""
    pairs = [echo_stream(seed, split, epoch, s, length, echo_step) for s in streams]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]))
    y = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return x, y


def to_chunks(series: torch.Tensor, chunk_length: int) -> torch.Tensor:
    """[streams, length] -> [chunks, streams, chunk_length]; a tail shorter than a chunk is dropped."""
    n = series.shape[1] // chunk_length
    return series[:, : n * chunk_length].reshape(series.shape[0], n, chunk_length).transpose(0, 1)
