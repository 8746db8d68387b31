"""The LightningModule: truncated BPTT of the network over blocks of chunks, its metrics and its checkpoints.

Design (why the training loop looks like this)
----------------------------------------------
Lightning 2.x has no built-in TBPTT (its docs' TBPTT page carries the hidden state between `training_step`
calls by hand). Here a training batch is a *block* of `chunks_per_batch` consecutive chunks and `training_step`
runs the tutorial's loop over them with manual optimization: forward a chunk from the carried state, loss,
backward, (clip,) optimizer step, detach the state. Every chunk gets its own optimizer step (`global_step`
counts chunks) while Lightning's fixed per-call cost (~2 ms, more than a chunk of this tiny model) is paid once
per block. `data.chunks_per_batch=1` gives the plain one-chunk-per-step loop.

The carried state `train_state` is the network's packed state `[layers, parts, streams, state_size]`, a plain
attribute rather than a registered buffer, because under DDP each process carries the state of its own streams
(a buffer would be broadcast from rank 0). It is detached after every chunk, so gradients stop at the chunk
boundary, and reset to zeros at the first block of every epoch; with `carry_state=False` it is reset at every
chunk (the tutorial's state-less variant: the experiment that shows what carrying buys). Validation runs its
fixed series from a zero state of its own, in one pass (the state carried through it).

Boundary positions: the first `echo_step` targets of a chunk echo inputs of an *earlier* chunk, so the training
loop can only predict them through the carried state (see echo_lstm/metrics.py). Positions whose target
precedes the series (t < echo_step, targets 0 by definition) are left out of every accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from echo_lstm.machinery import compat
from echo_lstm.machinery.errors import Diverged
from echo_lstm.metrics import chunk_metrics


def plain(config: Any) -> Any:
    """A Hydra/OmegaConf node as plain Python data (what a checkpoint may hold)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config


class EchoLSTM(pl.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        echo_step: int,
        truncated_backprop_length: int,
        optimizer: dict[str, Any] | None = None,
        carry_state: bool = True,
        per_chunk_hooks: bool = False,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ):
        """`net`: the network's config (`_target_` and its arguments); `optimizer`: a `_target_` + `_partial_`
        config (conf/optimizer/). Plain data only, so checkpoints load with `weights_only=True`."""
        super().__init__()
        net, optimizer = plain(net), plain(optimizer)  # (before save_hyperparameters, which reads these locals)
        self.save_hyperparameters(logger=False)  # the app logs the experiment's config itself
        self.automatic_optimization = False
        self.net = instantiate(net, _convert_="all")
        self.train_state: torch.Tensor | None = None
        self.last_train_metrics: dict[str, torch.Tensor] = {}
        self.last_epoch = 0  # the epoch of the last training batch (for the end-of-run summary)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [streams, T] of 0/1; state: None or [layers, parts, streams, state_size] -> (logits, state)."""
        return self.net(x, state)

    # ---------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if not self.hparams.optimizer:
            raise ValueError("EchoLSTM(optimizer=None) cannot train: give it an optimizer config (conf/optimizer/)")
        return instantiate(self.hparams.optimizer, _convert_="all")(self.parameters())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]  # [chunks, streams, T]
        n_chunks, streams, _ = x.shape
        net, carry = self.net, self.hparams.carry_state
        state = self.train_state
        if batch["first"] or state is None or state.shape[2] != streams:
            state = net.initial_state(streams)  # a new epoch: new series, fresh state
        hidden = net.unpack(state.to(x.device)) if carry else None
        inputs = net.inputs(x)
        optimizer_step = self._optimizer_step()
        losses, logits_seen = [], []
        for k in range(n_chunks):
            logits, hidden = net.run(inputs[k], hidden if carry else None)
            loss = F.cross_entropy(logits.reshape(-1, 2), y[k].reshape(-1))
            optimizer_step(loss)
            hidden = net.detach(hidden)
            losses.append(loss.detach())
            logits_seen.append(logits.detach())
        losses = torch.stack(losses)
        if not torch.isfinite(losses).all():  # one check per block, not a host sync per chunk
            first_bad = int((~torch.isfinite(losses)).nonzero()[0])
            raise Diverged(self.global_step - len(losses) + first_bad + 1)
        self.train_state = net.pack(hidden)
        preds = torch.stack(logits_seen).argmax(-1)
        metrics = chunk_metrics("train", losses.mean(), preds, y, batch["chunk0"], self.hparams.echo_step)
        del metrics["train/interior_acc"]
        self._log_train(metrics, batch_idx)
        # Tensors, read (copied to the host) only at the end of a run.
        self.last_train_metrics, self.last_epoch = metrics, self.current_epoch
        # For callbacks: the block's metrics (steps_to_echo, progress bar) and its last chunk, as the tutorial
        # draws it (figure). References only: no copies, no syncs.
        return {**metrics, "loss": metrics["train/loss"], "x": x[-1], "y": y[-1], "pred": preds[-1]}

    def _optimizer_step(self) -> Callable[[torch.Tensor], None]:
        """How one chunk's loss becomes one optimizer step (with the Trainer's gradient clipping, if set).

        Lightning's path (`manual_backward`, `clip_gradients`, `LightningOptimizer.step`) runs the precision
        plugin, the DDP reducer's set-up and every callback's backward/step hooks: ~0.1 ms a chunk, ~8% of a
        chunk of this tiny model. In one process at full precision none of that has work to do, so direct torch
        calls are used and Lightning's step counter is advanced as its optimizer wrapper would
        (compat.step_counter). Under DDP, mixed precision or `model.per_chunk_hooks=true`: Lightning's path.
        """
        opt = self.optimizers()
        trainer = self.trainer
        clip, algorithm = self.hparams.gradient_clip_val, self.hparams.gradient_clip_algorithm or "norm"
        if trainer.world_size > 1 or trainer.precision not in ("32-true", "64-true") or self.hparams.per_chunk_hooks:

            def lightning_step(loss: torch.Tensor) -> None:
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if clip:
                    self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
                opt.step()

            return lightning_step
        optimizer = opt.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        progress = compat.step_counter(trainer)

        def direct_step(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:  # what Lightning's clip_gradients does at full precision
                if algorithm == "value":
                    torch.nn.utils.clip_grad_value_(params, clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, clip)
            progress.increment_ready()
            optimizer.step()
            progress.increment_completed()

        return direct_step

    def _log_train(self, metrics: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Straight to the loggers, at x = global step (chunks), not through `self.log`: that costs ~0.7 ms a call
        # here (~5% of a batch), and Lightning would write the values only after `on_train_batch_end`, where
        # checkpoints are saved, so a run killed right after a save would lose this step's points.
        if (batch_idx + 1) % (self.trainer.log_every_n_steps or 1) == 0 and self.loggers:
            values = {k: float(v) for k, v in metrics.items()}  # one host copy per batch of chunks
            for logger in self.loggers:
                logger.log_metrics(values, step=self.global_step)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # The whole fixed series in one pass from a zero state: the same as running its chunks in order with the
        # state carried between them, only faster.
        x, y = batch["x"], batch["y"]  # [streams, length]
        logits, _ = self.net(x, None)
        loss = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        T = self.hparams.truncated_backprop_length
        streams, length = y.shape
        as_chunks = y.reshape(streams, length // T, T).transpose(0, 1)
        preds = logits.argmax(-1).reshape(streams, length // T, T).transpose(0, 1)
        metrics = chunk_metrics("val", loss, preds, as_chunks, 0, self.hparams.echo_step)
        metrics["val/min_acc"] = torch.minimum(metrics["val/acc"], metrics["val/boundary_acc"])  # early stopping
        # Reduced over processes (each validates its own streams); x axis = global step, as for train/*.
        self.log("val/boundary_acc", metrics.pop("val/boundary_acc"), on_epoch=True, sync_dist=True, prog_bar=True)
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        self.log("step", float(self.global_step), on_epoch=True, sync_dist=True)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(torch.isfinite(p).all() for p in self.parameters()):  # never overwrite a good checkpoint
            raise Diverged(self.global_step, "weights")
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
        checkpoint["echo_slurm_job"] = os.environ.get("SLURM_JOB_ID")  # only this job continues it when requeued
        compat.mark_epoch_in_progress(checkpoint)  # (a resumed run's counters can lag: see there)

    def _rng_state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        try:
            trainer = self.trainer
        except RuntimeError:  # a plain load (load_from_checkpoint): no process layout, no RNG to restore
            trainer = None
        state = checkpoint.get("echo_train_state")
        if state is not None and trainer is not None and trainer.world_size > 1:
            per_rank = state.shape[2] // trainer.world_size
            state = state[:, :, trainer.global_rank * per_rank : (trainer.global_rank + 1) * per_rank]
        self.train_state = state
        rngs = checkpoint.get("echo_rng_states")
        if rngs and trainer is not None:  # resuming a training run
            rng = rngs[trainer.global_rank] if len(rngs) == trainer.world_size else rngs[0]
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"], self.device)
