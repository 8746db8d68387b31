"""(a) The minimal hand-written PyTorch TBPTT loop that the project's training path is compared with.

`nn.LSTM` (multi-layer) + `nn.Linear` head, Adagrad lr 0.3, the (h, c) state carried and detached after every
chunk, one optimizer step per chunk, no host syncs in the loop; the project's echo data
(`echo_lstm.data.echo_series`: new series and a zero state every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.probe import Clocks, Measure, sync
from echo_lstm.data import TRAIN, echo_series, to_chunks


@dataclass(frozen=True)
class Workload:
    """The task both paths train: the model's and the data's shape, threads and device."""

    layers: int
    state_size: int
    streams: int
    chunk_length: int
    chunks_per_batch: int
    stream_length: int  # bits per stream and epoch
    echo_step: int
    seed: int
    threads: int
    device: str  # "cpu" | "cuda"


class HandWritten:
    """The loop's state (model, optimizer, epoch, position, recurrent state) across `run` calls."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.device = torch.device(w.device)
        torch.set_num_threads(w.threads)
        torch.manual_seed(w.seed)
        self.rnn = nn.LSTM(1, w.state_size, w.layers, batch_first=True).to(self.device)
        self.head = nn.Linear(w.state_size, 2).to(self.device)
        self.opt = torch.optim.Adagrad([*self.rnn.parameters(), *self.head.parameters()], lr=0.3)
        self.zeros = torch.zeros(w.layers, w.streams, w.state_size, device=self.device)
        self.epoch, self.k, self.h, self.c = 0, 0, self.zeros, self.zeros
        self.x, self.y = self.epoch_data(0)

    def epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[chunks, streams, T, 1] inputs and [chunks, streams, T] targets, on the device once per epoch."""
        w = self.w
        x, y = echo_series(w.seed, TRAIN, epoch, range(w.streams), w.stream_length, w.echo_step)
        x = to_chunks(x, w.chunk_length).to(device=self.device, dtype=torch.float32).unsqueeze(-1).contiguous()
        return x, to_chunks(y, w.chunk_length).to(self.device).contiguous()

    def run(self, chunks: int) -> None:
        rnn, head, opt = self.rnn, self.head, self.opt  # locals: the loop does nothing but the work
        x, y, h, c, k = self.x, self.y, self.h, self.c, self.k
        for _ in range(chunks):
            if k == len(x):  # a new epoch: new series, fresh state
                self.epoch += 1
                x, y = self.x, self.y = self.epoch_data(self.epoch)
                h, c, k = self.zeros, self.zeros, 0
            out, (h, c) = rnn(x[k], (h, c))
            loss = F.cross_entropy(head(out).reshape(-1, 2), y[k].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            h, c = h.detach(), c.detach()
            k += 1
        self.h, self.c, self.k = h, c, k


def hand_written(w: Workload, warmup: int, timed: int) -> Measure:
    """A fresh loop: `warmup` chunks untimed, then `timed` chunks timed."""
    loop = HandWritten(w)
    loop.run(warmup)
    sync(loop.device)
    t0 = Clocks.now()
    loop.run(timed)
    sync(loop.device)
    t1 = Clocks.now()
    return Measure(timed, t1.wall - t0.wall, t1.cpu - t0.cpu, faults=t1.faults - t0.faults)
