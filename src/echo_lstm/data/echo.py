"""The echo series: generated per stream, cut into chunks, handed out in order.

Each stream (a row of the tutorial's batch) is an independent random bit series whose bits depend only on
(seed, split, epoch, stream index). So the data are reproducible, new every epoch, and a stream's bits do
not depend on how many streams or processes there are: under DDP each process simply generates the
streams it owns (the streams are the unit of data parallelism; chunks of one stream never leave it).

A training batch is a *block* of `chunks_per_batch` consecutive chunks of every local stream:
`x`, `y` of shape [chunks, streams, truncated_backprop_length]. Blocks come in order and are never shuffled;
`first=True` marks the block that starts an epoch, where the model resets its carried state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from echo_lstm.data.series import TRAIN, VAL, echo_series, to_chunks
from echo_lstm.machinery.errors import check


class ChunkBlocks:
    """One epoch of training blocks for this process's streams: a sized, *stateful* iterable.

    Lightning saves `state_dict()` in every checkpoint and calls `load_state_dict()` on resume, so a run
    killed mid-epoch continues with the next unseen block of the same epoch's data. Being sized also turns
    off Lightning's one-batch prefetch, so the position saved is exactly the blocks already trained on.
    The epoch is read from the trainer when iteration starts (the data of epoch e are a pure function of e).
    """

    def __init__(
        self,
        make_epoch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        n_chunks: int,
        chunks_per_batch: int,
        current_epoch: Callable[[], int],
    ):
        self.make_epoch = make_epoch
        self.chunks_per_batch = chunks_per_batch
        self.n_blocks = math.ceil(n_chunks / chunks_per_batch)
        self.current_epoch = current_epoch
        self.epoch = 0
        self.next_block = 0
        self._resume_at: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.n_blocks

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._blocks()

    def _blocks(self) -> Iterator[dict[str, Any]]:
        # A generator: this body runs at the first next(), once the trainer knows the epoch.
        self.epoch = self.current_epoch()
        start = 0
        if self._resume_at is not None and self._resume_at["epoch"] == self.epoch:
            start = self._resume_at["next_block"]
        self._resume_at = None
        x, y = self.make_epoch(self.epoch)
        k = self.chunks_per_batch
        for block in range(start, self.n_blocks):
            self.next_block = block + 1  # set before yielding: a checkpoint taken after this batch resumes after it
            yield {
                "x": x[block * k : (block + 1) * k],
                "y": y[block * k : (block + 1) * k],
                "first": block == 0,
                "chunk0": block * k,  # index of the block's first chunk within the epoch
            }

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "next_block": self.next_block}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)


class SingleBatch:
    """An iterable of one batch (a plain list would read as one dataloader per element to Lightning)."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        yield self.batch


class EchoDataModule(pl.LightningDataModule):
    """The echo series of `conf/data/echo.yaml` (where the defaults live), per process, as training blocks and
    one fixed validation series."""

    def __init__(
        self,
        total_series_length: int,
        batch_size: int,
        truncated_backprop_length: int,
        echo_step: int,
        chunks_per_batch: int,
        val_series_length: int,
        seed: int,
    ):
        super().__init__()
        T = truncated_backprop_length
        check(batch_size >= 1, "batch_size", batch_size, "must be an integer >= 1 (number of streams)")
        check(T >= 1, "truncated_backprop_length", T, "must be an integer >= 1")
        check(echo_step >= 0, "echo_step", echo_step, "must be an integer >= 0")
        check(chunks_per_batch >= 1, "chunks_per_batch", chunks_per_batch, "must be an integer >= 1")
        for name, length in (("total_series_length", total_series_length), ("val_series_length", val_series_length)):
            check(length // batch_size >= T, name, length, f"too short: needs at least batch_size * "
                  f"truncated_backprop_length = {batch_size * T} for one chunk per stream")
            stream = length // batch_size // T * T
            check(echo_step < stream, "echo_step", echo_step, f"must be shorter than a stream ({stream} steps of "
                  f"{name}={length} over {batch_size} streams): no target would echo an input")
        self.save_hyperparameters(logger=False)
        self.stream_length = total_series_length // batch_size
        self.n_chunks = self.stream_length // T

    def setup(self, stage: str | None = None) -> None:
        """Nothing to prepare: the series are generated per epoch, on the device (make_epoch)."""

    def local_streams(self) -> range:
        """The streams this process owns: a contiguous, fixed slice of the global batch_size streams."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        per_rank = self.hparams.batch_size // world
        return range(rank * per_rank, (rank + 1) * per_rank)

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

    def make_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's training data of one epoch, as chunks, moved to the device once per epoch.

        With `trainer.overfit_batches` every epoch gets epoch 0's series, so the same blocks come again."""
        h = self.hparams
        if getattr(self.trainer, "overfit_batches", 0):
            epoch = 0
        x, y = echo_series(h.seed, TRAIN, epoch, self.local_streams(), self.stream_length, h.echo_step)
        T, device = h.truncated_backprop_length, self._device()
        return to_chunks(x, T).to(device), to_chunks(y, T).to(device)

    def val_series(self) -> dict[str, torch.Tensor]:
        """The fixed validation series of this process's streams, whole: [streams, length]."""
        h = self.hparams
        length = (h.val_series_length // h.batch_size) // h.truncated_backprop_length * h.truncated_backprop_length
        x, y = echo_series(h.seed, VAL, 0, self.local_streams(), length, h.echo_step)
        return {"x": x, "y": y}

    def train_dataloader(self) -> ChunkBlocks:
        # Not a torch DataLoader: nothing to collate, no workers, and no DistributedSampler can be injected.
        return ChunkBlocks(
            self.make_epoch,
            self.n_chunks,
            self.hparams.chunks_per_batch,
            current_epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
        )

    def val_dataloader(self) -> SingleBatch:
        return SingleBatch(self.val_series())
