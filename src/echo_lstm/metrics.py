"""The one registry of the metrics a run computes: their names, which way is better, and where they are logged.

Logging (the model), early stopping and checkpointing (`monitor` keys, checked against this list), the HParams
tab, the sweep summary (columns and sort direction) and `optimized_metric` all read it. Light on purpose (no
torch): config checks import it.

What the accuracies show (see the README, "What proves the carried state"):
- `train/boundary_acc` is measured *while training*, at the positions whose target lies in the previous chunk.
  The training loop can only get them right if it really carries the state from chunk to chunk: it is the
  proof of the carry (with `model.carry_state=false` it stays at chance, 0.5).
- `val/*` run the fixed validation series in one pass from a zero state: the state is always carried there.
  `val/boundary_acc` shows whether the trained *network* uses its state at inference, not whether the training
  loop carried it (a network trained with resets can still echo there when the delay fits in a chunk).
"""

from __future__ import annotations

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


def better(name: str) -> str:
    """"max" or "min" for a registered metric (KeyError for others: callers check names first)."""
    return BY_NAME[name].better
