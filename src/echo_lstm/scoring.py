"""Which positions of a chunk count for which accuracy, and the metrics of chunks (torch only, no Lightning).

A position t of a stream (counted from the series' start) has a target when t >= echo_step (before that, the
target precedes the series and is 0 by definition: left out of every accuracy). Its target lies in an *earlier*
chunk when t % T < echo_step: a boundary position, which only a carried state can get right. The others with a
target are interior positions. The names of the metrics are registered in echo_lstm/metrics.py.
"""

from __future__ import annotations

import torch


def position_masks(first_chunk: int, n_chunks: int, chunk_length: int, echo_step: int, device=None):
    """(valid, boundary) masks [n_chunks, 1, chunk_length] for chunks first_chunk.. of a stream: valid = the
    target echoes an input of the series; boundary = valid and that input lies in an earlier chunk."""
    t = torch.arange(n_chunks * chunk_length, device=device).reshape(n_chunks, 1, chunk_length)
    t = t + first_chunk * chunk_length
    valid = t >= echo_step
    boundary = valid & (t % chunk_length < echo_step)
    return valid, boundary


def masked_acc(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand_as(correct)
    return (correct & mask).sum() / mask.sum().clamp(min=1)


def chunk_metrics(stage: str, loss: torch.Tensor, preds: torch.Tensor, y: torch.Tensor, first_chunk: int,
                  echo_step: int) -> dict[str, torch.Tensor]:
    """Loss and accuracies of chunks [chunks, streams, T] (on the device: no host sync)."""
    n_chunks, _, T = y.shape
    valid, boundary = position_masks(first_chunk, n_chunks, T, echo_step, y.device)
    correct = preds == y
    return {
        f"{stage}/loss": loss,
        f"{stage}/acc": masked_acc(correct, valid),
        f"{stage}/boundary_acc": masked_acc(correct, boundary),
        f"{stage}/interior_acc": masked_acc(correct, valid & ~boundary),
    }
