"""The metrics a run computes (`chunk_metrics`, for training and validation) and their one registry: names, which
way is better, where they are logged. A new metric is one entry of METRICS and one line of `chunk_metrics`.

Early stopping and checkpointing (`monitor` keys, checked against this list), the HParams tab, the sweep summary
(columns and sort direction) and `optimized_metric` read the registry; a name may be a pattern (`train/grad/*`,
for per-layer metrics). Light on purpose (torch is imported inside the functions): config checks import it.

What the accuracies show (see the README, "What proves the carried state"):
- `train/boundary_acc` is measured *while training*, at the positions whose target lies in the previous chunk.
  The training loop can only get them right if it really carries the state from chunk to chunk: it is the
  proof of the carry (with `model.carry_state=false` it stays at chance, 0.5).
- `val/*` run the fixed validation series in one pass from a zero state: the state is always carried there.
  `val/boundary_acc` shows whether the trained *network* uses its state at inference, not whether the training
  loop carried it (a network trained with resets can still echo there when the delay fits in a chunk).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    better: str  # "max" | "min"
    logged: str  # "train batch" | "validation" | "once"
    hparams: bool  # one of the HParams tab's metrics
    summary: bool  # a column of the sweep summary
    doc: str


METRICS: tuple[Metric, ...] = (
    Metric("val/boundary_acc", "max", "validation", True, True,
           "accuracy at chunk-boundary positions of the validation series (state carried: inference)"),
    Metric("val/acc", "max", "validation", True, True, "accuracy over all positions of the validation series"),
    Metric("val/interior_acc", "max", "validation", False, False,
           "accuracy at positions whose target lies in the same chunk"),
    Metric("val/loss", "min", "validation", False, True, "cross-entropy on the validation series"),
    Metric("val/min_acc", "max", "validation", False, False,
           "min(val/acc, val/boundary_acc): early stopping needs both at the target"),
    Metric("train/boundary_acc", "max", "train batch", True, True,
           "accuracy at chunk-boundary positions while training: only a carried state gets them right"),
    Metric("train/acc", "max", "train batch", False, False, "accuracy over all positions while training"),
    Metric("train/loss", "min", "train batch", False, True, "training cross-entropy, mean over a batch's chunks"),
    Metric("train/steps_to_echo", "min", "once", True, True,
           "first step whose moving window of train/boundary_acc reached target_acc (inf: never)"),
)

BY_NAME = {m.name: m for m in METRICS}
NAMES = tuple(BY_NAME)
HPARAMS = tuple(m.name for m in METRICS if m.hparams)
SUMMARY = tuple(m.name for m in METRICS if m.summary)
STEPS_TO_ECHO = "train/steps_to_echo"


def find(name: str) -> Metric | None:
    """The registry's entry for `name` (its own, or the first pattern that matches it)."""
    return BY_NAME.get(name) or next((m for m in METRICS if fnmatch.fnmatchcase(name, m.name)), None)


def better(name: str) -> str:
    """"max" or "min" for a registered metric (KeyError for others: callers check names first)."""
    metric = find(name)
    if metric is None:
        raise KeyError(name)
    return metric.better


# Which positions of a chunk count for which accuracy. A position t of a stream (counted from the series' start)
# has a target when t >= echo_step (before that, the target precedes the series and is 0 by definition: left out
# of every accuracy). Its target lies in an *earlier* chunk when t % T < echo_step: a boundary position, which only
# a carried state can get right. The others with a target are interior positions.
def position_masks(first_chunk: int, n_chunks: int, chunk_length: int, echo_step: int, device=None):
    """(valid, boundary) masks [n_chunks, 1, chunk_length] for chunks first_chunk.. of a stream: valid = the
    target echoes an input of the series; boundary = valid and that input lies in an earlier chunk."""
    import torch

    t = torch.arange(n_chunks * chunk_length, device=device).reshape(n_chunks, 1, chunk_length)
    t = t + first_chunk * chunk_length
    valid = t >= echo_step
    boundary = valid & (t % chunk_length < echo_step)
    return valid, boundary


def masked_acc(correct, mask):
    mask = mask.expand_as(correct)
    return (correct & mask).sum() / mask.sum().clamp(min=1)


def chunk_metrics(stage: str, loss, preds, y, first_chunk: int, echo_step: int) -> dict:
    """Loss and accuracies of chunks [chunks, streams, T] (tensors on the device: no host sync)."""
    n_chunks, _, T = y.shape
    valid, boundary = position_masks(first_chunk, n_chunks, T, echo_step, y.device)
    correct = preds == y
    return {
        f"{stage}/loss": loss,
        f"{stage}/acc": masked_acc(correct, valid),
        f"{stage}/boundary_acc": masked_acc(correct, boundary),
        f"{stage}/interior_acc": masked_acc(correct, valid & ~boundary),
    }
