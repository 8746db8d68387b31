"""The library internals this project relies on (echo_lstm/machinery/compat.py) and the Trainer
arguments it accepts: these
tests fail loudly, naming what changed, when a Lightning release changes them."""

import inspect
from dataclasses import fields

import pytorch_lightning as pl
from conftest import TINY, make_datamodule, make_model

from echo_lstm.machinery import compat, signatures
from echo_lstm.machinery.config import OWNED, TRAINER, trainer_schema


def test_the_trainer_schema_is_the_installed_trainers_signature_but_the_owned_arguments():
    # Read from Lightning's source without importing it (signatures.py): it must agree with what Python sees.
    parameters = inspect.signature(pl.Trainer.__init__).parameters
    schema = {f.name: f.default for f in fields(trainer_schema())}
    assert schema.pop("_target_") == TRAINER
    assert set(schema) == set(parameters) - {"self"} - set(OWNED)
    assert set(OWNED) <= set(parameters), "OWNED names arguments this Lightning no longer has"
    assert all(parameters[name].default == default for name, default in schema.items())


def test_signatures_are_read_without_importing_and_agree_with_inspect():
    import torch

    from echo_lstm.data.echo import EchoDataModule
    from echo_lstm.models.module import EchoLSTM
    from echo_lstm.models.net import StackedRNN

    for target, cls in [("echo_lstm.models.net.StackedRNN", StackedRNN), ("torch.optim.Adagrad", torch.optim.Adagrad),
                        ("echo_lstm.data.echo.EchoDataModule", EchoDataModule),
                        ("echo_lstm.models.module.EchoLSTM", EchoLSTM),
                        ("pytorch_lightning.callbacks.EarlyStopping", pl.callbacks.EarlyStopping)]:
        read = signatures.signature(target)
        expected = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "kwargs")]
        assert list(read.params) == expected, target


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
