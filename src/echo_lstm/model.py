"""The stacked recurrent network and its truncated-BPTT training, as one LightningModule.

Design (why the training loop looks like this)
----------------------------------------------
Lightning 2.x has no built-in TBPTT (its docs' TBPTT page carries the hidden state between
`training_step` calls by hand). We do the same, one step further: a training batch is a *block* of
`chunks_per_batch` consecutive chunks, and `training_step` runs the tutorial's loop over them with manual
optimization: forward a chunk from the carried state, loss, backward, optimizer step, detach the state.
So every chunk still gets its own optimizer step (as in the tutorial; `global_step` counts chunks), but
Lightning's fixed per-call cost (~2 ms, far more than a chunk of this tiny model costs) is paid once per
block instead of once per chunk. `data.chunks_per_batch=1` gives the plain one-chunk-per-step loop.

The carried state is ONE tensor `[layers, S, streams, state_size]`, S = 2 for LSTM (index 0 = cell state,
1 = hidden state, the tutorial's order) and S = 1 for GRU/RNN. It is a plain attribute, not a registered
buffer, because under DDP each process carries the state of its own streams (a buffer would be broadcast
from rank 0). It is detached after every chunk, so gradients stop at the chunk boundary, and reset to zeros
at the first block of every epoch. Validation runs its fixed series from a zero state of its own.

Boundary accuracy: the first `echo_step` targets of a chunk echo inputs of the *previous* chunk, so a model
can only predict them through the carried state. Positions whose target precedes the series (t <
echo_step, targets 0 by definition) are left out of every accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class NonFiniteLossError(RuntimeError):
    """Training diverged: raised before anything of the bad state can be checkpointed."""

    def __init__(self, step: int, what: str = "loss"):
        self.step = step
        super().__init__(f"the {what} became NaN or infinite at step {step}")


def state_parts(cell: str) -> int:
    return 2 if cell == "lstm" else 1


def position_masks(first_chunk: int, n_chunks: int, chunk_length: int, echo_step: int, device=None):
    """(valid, boundary) masks of shape [n_chunks, 1, chunk_length] for chunks first_chunk.. of a stream."""
    t = torch.arange(n_chunks * chunk_length, device=device).reshape(n_chunks, 1, chunk_length)
    t = t + first_chunk * chunk_length
    valid = t >= echo_step
    boundary = valid & (t % chunk_length < echo_step)
    return valid, boundary


def masked_acc(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand_as(correct)
    return (correct & mask).sum() / mask.sum().clamp(min=1)


class EchoLSTM(pl.LightningModule):
    def __init__(
        self,
        layers: int = 3,
        state_size: int = 4,
        cell: str = "lstm",
        dropout: float = 0.0,
        forget_bias: float = 0.0,
        echo_step: int = 3,
        truncated_backprop_length: int = 15,
        optimizer: dict[str, Any] | None = None,
        per_chunk_hooks: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the app logs the whole resolved config instead
        self.automatic_optimization = False
        self.rnn = RNN_CLASSES[cell](
            input_size=1,
            hidden_size=state_size,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,  # between layers; the top layer's is below
        )
        self.output_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(state_size, 2)
        if cell == "lstm" and forget_bias:
            with torch.no_grad():  # gate order i, f, g, o: TensorFlow's LSTMCell adds this to f
                for layer in range(layers):
                    getattr(self.rnn, f"bias_ih_l{layer}")[state_size : 2 * state_size] += forget_bias
        self.train_state: torch.Tensor | None = None
        self.last_train_metrics: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- the network
    def initial_state(self, streams: int) -> torch.Tensor:
        h = self.hparams
        return self.head.weight.new_zeros(h.layers, state_parts(h.cell), streams, h.state_size)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [streams, T] of 0/1 (any dtype); state: None or [layers, S, streams, state_size].

        Returns logits [streams, T, 2] and the final state, packed the same way.
        """
        logits, hidden = self._run(x.to(self.head.weight.dtype).unsqueeze(-1), self._unpack(state))
        return logits, self._pack(hidden)

    def _run(self, inputs: torch.Tensor, hidden: Any) -> tuple[torch.Tensor, Any]:
        """One chunk, inputs [streams, T, 1], with torch's own state format ((h, c) for LSTM, else h)."""
        out, hidden = self.rnn(inputs, hidden)
        if self.hparams.dropout:
            out = self.output_dropout(out)
        return self.head(out), hidden

    def _unpack(self, state: torch.Tensor | None) -> Any:
        if state is None:
            return None
        if self.hparams.cell == "lstm":
            return state[:, 1].contiguous(), state[:, 0].contiguous()  # torch wants (h, c)
        return state[:, 0].contiguous()

    def _pack(self, hidden: Any) -> torch.Tensor:
        if self.hparams.cell == "lstm":
            h, c = hidden
            return torch.stack((c, h), dim=1)
        return hidden.unsqueeze(1)

    # ---------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = dict(self.hparams.optimizer or {"name": "adagrad", "lr": 0.3})
        name, lr = o.pop("name"), o.pop("lr")
        params = self.parameters()
        if name == "adagrad":
            return torch.optim.Adagrad(
                params, lr=lr, initial_accumulator_value=o.get("initial_accumulator_value", 0.0),
                weight_decay=o.get("weight_decay", 0.0), eps=o.get("eps", 1e-10),
            )
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=o.get("weight_decay", 0.0))
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=o.get("momentum", 0.0),
                                   weight_decay=o.get("weight_decay", 0.0))
        raise ValueError(f"optimizer.name={name!r} is invalid: must be one of adagrad, adam, sgd")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]  # [chunks, streams, T]
        n_chunks, streams, T = x.shape
        state = self.train_state
        if batch["first"] or state is None or state.shape[2] != streams:
            state = self.initial_state(streams)  # a new epoch: new series, fresh state
        hidden = self._unpack(state.to(x.device))
        inputs = x.to(self.head.weight.dtype).unsqueeze(-1)
        optimizer_step = self._optimizer_step()
        lstm = self.hparams.cell == "lstm"
        losses, logits_seen = [], []
        for k in range(n_chunks):
            logits, hidden = self._run(inputs[k], hidden)
            loss = F.cross_entropy(logits.reshape(-1, 2), y[k].reshape(-1))
            optimizer_step(loss)
            # Truncate: the next chunk starts from the state's value, its gradients stop here.
            hidden = (hidden[0].detach(), hidden[1].detach()) if lstm else hidden.detach()
            losses.append(loss.detach())
            logits_seen.append(logits.detach())
        losses = torch.stack(losses)
        if not torch.isfinite(losses).all():  # one check per block, not a host sync per chunk
            first_bad = int((~torch.isfinite(losses)).nonzero()[0])
            raise NonFiniteLossError(self.global_step - len(losses) + first_bad + 1)
        self.train_state = self._pack(hidden)
        preds = torch.stack(logits_seen).argmax(-1)
        loss = losses.mean()
        metrics = self._block_metrics("train", loss, preds, y, batch["chunk0"])
        self._log_train(metrics, batch_idx)
        self.last_train_metrics = metrics  # tensors, read (copied to the host) only at the end of a run
        # For callbacks: the block's metrics (steps_to_echo, progress bar) and its last chunk, as the
        # tutorial draws it (figure). References only: no copies, no syncs.
        return {**metrics, "loss": loss, "x": x[-1], "y": y[-1], "pred": preds[-1]}

    def _optimizer_step(self) -> Callable[[torch.Tensor], None]:
        """How one chunk's loss becomes one optimizer step.

        Lightning's path (`manual_backward` + `LightningOptimizer.step`) runs the precision plugin, the DDP
        reducer's set-up and every callback's before/after-backward and optimizer-step hooks: ~0.1 ms a chunk,
        ~8% of a chunk of this tiny model. In one process at full precision none of that has work to do,
        so the direct torch calls are used, and Lightning's step counter is advanced exactly as its
        optimizer wrapper would (`global_step` stays the number of chunks). Under DDP (gradient all-reduce)
        or mixed precision (loss scaling), or with `model.per_chunk_hooks=true`, Lightning's path is used.
        """
        opt = self.optimizers()
        trainer = self.trainer
        if trainer.world_size > 1 or trainer.precision not in ("32-true", "64-true") or self.hparams.per_chunk_hooks:

            def lightning_step(loss: torch.Tensor) -> None:
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()

            return lightning_step
        optimizer = opt.optimizer
        progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress

        def direct_step(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            progress.increment_ready()
            optimizer.step()
            progress.increment_completed()

        return direct_step

    def _block_metrics(self, stage: str, loss, preds, y, first_chunk: int) -> dict[str, torch.Tensor]:
        """Loss, accuracy and boundary accuracy of a block of chunks [chunks, streams, T], on the device."""
        n_chunks, _, T = y.shape
        valid, boundary = position_masks(first_chunk, n_chunks, T, self.hparams.echo_step, y.device)
        correct = preds == y
        return {
            f"{stage}/loss": loss,
            f"{stage}/acc": masked_acc(correct, valid),
            f"{stage}/boundary_acc": masked_acc(correct, boundary),
        }

    def _log_train(self, metrics: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Straight to the loggers, at x = global step (chunks), not through `self.log`: that costs ~0.7 ms a
        # call here (~5% of a batch), and Lightning would write the values only after `on_train_batch_end`,
        # where checkpoints are saved, so a run killed right after a save would lose this step's points.
        # Callbacks and the progress bar read them from training_step's outputs.
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            values = {k: float(v) for k, v in metrics.items()}  # one host copy per batch of chunks
            for logger in self.loggers:
                logger.log_metrics(values, step=self.global_step)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # The whole fixed series in one call from a zero state: the same as running its chunks in order
        # with the state carried between them, only faster.
        x, y = batch["x"], batch["y"]  # [streams, length]
        logits, _ = self(x)
        loss = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        T = self.hparams.truncated_backprop_length
        streams, length = y.shape
        as_chunks = y.reshape(streams, length // T, T).transpose(0, 1)
        preds = logits.argmax(-1).reshape(streams, length // T, T).transpose(0, 1)
        metrics = self._block_metrics("val", loss, preds, as_chunks, 0)
        metrics["val/min_acc"] = torch.minimum(metrics["val/acc"], metrics["val/boundary_acc"])  # early stopping
        # Reduced over processes (each validates its own streams); x axis = global step, as for train/*.
        self.log("val/boundary_acc", metrics.pop("val/boundary_acc"), on_epoch=True, sync_dist=True, prog_bar=True)
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        self.log("step", float(self.global_step), on_epoch=True, sync_dist=True)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(torch.isfinite(p).all() for p in self.parameters()):  # never overwrite a good checkpoint
            raise NonFiniteLossError(self.global_step, "weights")
        # Every stream's carried state, in global stream order, and every process's RNG (dropout masks).
        world = self.trainer.world_size
        state, rng = self.train_state, self._rng_state()
        if world > 1:
            rngs: list[Any] = [None] * world
            torch.distributed.all_gather_object(rngs, rng)
            rng = rngs
            if state is not None:
                gathered = [torch.empty_like(state) for _ in range(world)]
                torch.distributed.all_gather(gathered, state.contiguous())  # rank r owns the r-th slice
                state = torch.cat(gathered, dim=2)
        else:
            rng = [rng]
        checkpoint["echo_train_state"] = None if state is None else state.detach().cpu()
        checkpoint["echo_rng_states"] = rng

    def _rng_state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("echo_train_state")
        if state is not None and self._trainer is not None and self.trainer.world_size > 1:
            per_rank = state.shape[2] // self.trainer.world_size
            rank = self.trainer.global_rank
            state = state[:, :, rank * per_rank : (rank + 1) * per_rank]
        self.train_state = state
        rngs = checkpoint.get("echo_rng_states")
        if rngs and self._trainer is not None:  # resuming a training run (not a plain load)
            rng = rngs[self.trainer.global_rank] if len(rngs) == self.trainer.world_size else rngs[0]
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"], self.device)
