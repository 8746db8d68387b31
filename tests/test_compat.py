"""The library internals this project relies on (echo_lstm/compat.py) and the Trainer arguments it accepts: these
tests fail loudly, naming what changed, when a Lightning release changes them."""

import inspect
from dataclasses import fields

import pytorch_lightning as pl
from conftest import TINY, make_datamodule, make_model

from echo_lstm import compat
from echo_lstm.config import OWNED, TrainerConfig


def test_trainer_config_is_every_trainer_argument_but_the_owned_ones():
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    schema = {f.name for f in fields(TrainerConfig)}
    assert accepted - schema - set(OWNED) == set(), "new Trainer arguments: add them to config.TrainerConfig"
    assert set(OWNED) <= accepted, "OWNED names arguments this Lightning no longer has"
    newer = schema - accepted  # arguments of newer Lightning releases: passed on only where they exist
    assert newer <= {"enable_autolog_hparams", "model_registry"}, newer


def test_validation_follows_predicts_lightnings_own_validations():
    predicted, validated = [], []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if compat.validation_follows(trainer):
                predicted.append(trainer.global_step)

        def on_validation_end(self, trainer, pl_module):
            validated.append(trainer.global_step)

    trainer = pl.Trainer(max_epochs=2, val_check_interval=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         callbacks=[Watch()])
    trainer.fit(make_model(*TINY), datamodule=make_datamodule(*TINY))
    assert validated == list(range(12, 121, 12))  # every 3 batches of 4 chunks (15 batches per epoch)
    assert predicted == validated


def test_step_counter_advances_global_step_as_lightnings_optimizer_wrapper_does():
    seen = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            progress = compat.step_counter(trainer)
            seen.append((trainer.global_step, progress.total.completed))

    trainer = pl.Trainer(max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0, callbacks=[Count()])
    trainer.fit(make_model(*TINY), datamodule=make_datamodule(*TINY))
    assert seen == [(4, 4), (8, 8)]  # one step per chunk, through the direct path (compat.step_counter)
