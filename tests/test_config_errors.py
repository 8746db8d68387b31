"""Every bad setting is refused before anything runs, with one line naming the setting, the value and what is
allowed. Checked in-process (compose + the CLI's translation of Hydra's errors + validate: the code train.py
runs); tests/test_safety.py checks the whole promise end to end (exit code, one line, nothing left behind)."""

import pytest
from conftest import compose

from echo_lstm.machinery.cli import translate
from echo_lstm.machinery.config import config_groups, validate
from echo_lstm.machinery.errors import ConfigError
from echo_lstm.training import build


def refusal(*overrides: str) -> str:
    """The one line train.py prints for these overrides (composition errors translated, then value checks)."""
    try:
        cfg = compose(*overrides)
    except Exception as error:
        translated = translate(error, list(overrides))
        assert translated is not None, f"untranslated: {error!r}"
        return translated.line()
    with pytest.raises(ConfigError) as error:
        validate(cfg)
        build(cfg)  # the constructors' own checks (their ranges' one home)
    return error.value.line()


BAD = [
    # (overrides, the start of the line: the setting and the value, then what the message must say)
    ("layers=0", "error: layers=0 is invalid: must be an integer >= 1"),
    ("layers=-2", "error: layers=-2 is invalid: must be an integer >= 1"),
    ("layers=abc", "error: layers=abc is invalid: must be an integer"),
    ("layers=1.5", "error: layers=1.5 is invalid: must be an integer"),
    ("layerz=5", "error: layerz=5 is invalid: no such setting (did you mean layers?)"),
    ("model.net.state_size=0", "error: model.net.state_size=0 is invalid: must be an integer >= 1"),
    ("model.net.state_sizee=3",
     "error: model.net.state_sizee=3 is invalid: no such setting (did you mean state_size?)"),
    ("model.net.cell=lstmm", "error: model.net.cell='lstmm' is invalid: must be one of lstm, gru, rnn"),
    ("model.net.dropout=1.0", "error: model.net.dropout=1.0 is invalid: must be in [0, 1)"),
    ("model.net.forget_bias=nan", "error: model.net.forget_bias=nan is invalid: must be a finite number"),
    ("model.carry_state=maybe", "error: model.carry_state=maybe is invalid: must be true or false"),
    ("data.batch_size=0", "error: data.batch_size=0 is invalid: must be an integer >= 1"),
    ("data.truncated_backprop_length=0", "error: data.truncated_backprop_length=0 is invalid: must be an integer >= 1"),
    ("data.echo_step=-1", "error: data.echo_step=-1 is invalid: must be an integer >= 0"),
    ("data.echo_step=20000", "error: data.echo_step=20000 is invalid: must be shorter than a stream"),
    ("data.total_series_length=10", "error: data.total_series_length=10 is invalid: too short"),
    ("data.val_series_length=3", "error: data.val_series_length=3 is invalid: too short"),
    ("data.chunks_per_batch=0", "error: data.chunks_per_batch=0 is invalid: must be an integer >= 1"),
    ("data.total_series_length=100000000000", "error: data.total_series_length=100000000000 is invalid: needs about"),
    ("model.net.state_size=100000", "error: model.net.state_size=100000 is invalid: needs about"),
    # The optimizer's own checks (torch's), named by the value they quote.
    ("optimizer.lr=-0.1", "error: optimizer.lr=-0.1 is invalid: Adagrad refuses it: Invalid learning rate: -0.1"),
    ("optimizer=sgd optimizer.momentum=-0.5", "error: optimizer.momentum=-0.5 is invalid: SGD refuses it: Invalid "
                                              "momentum value: -0.5"),
    ("optimizer.lr=fast", "error: optimizer.lr=fast is invalid: must be a number"),
    ("optimizer.weight_decay=inf", "error: optimizer.weight_decay=inf is invalid: must be a finite number"),
    ("optimizer.lr=1e308", "error: optimizer.lr=1e+308 is invalid: must be below 3.4e38 (a float32's range)"),
    ("optimizer.initial_accumulator_value=-1",
     "error: optimizer.initial_accumulator_value=-1 is invalid: Adagrad refuses it: Invalid initial_accumulator_value"),
    ("optimizer.name=rmsprop", "error: optimizer.name=rmsprop is invalid: no such setting"),
    ("optimizer=lbfgs", "error: optimizer=lbfgs is invalid: must be one of " + ", ".join(config_groups()["optimizer"])),
    ("target_acc=1.5", "error: target_acc=1.5 is invalid: must be in (0, 1]"),
    ("seed=x", "error: seed=x is invalid: must be an integer"),
    ("seed=-1", "error: seed=-1 is invalid: must be an integer in [0, 2**32 - 1]"),
    ("seed=18446744073709551616", "error: seed=18446744073709551616 is invalid: must be an integer in [0, 2**32 - 1]"),
    ("threads=-1", "error: threads=-1 is invalid: must be between 0 (torch's default) and"),
    ("threads=1000", "error: threads=1000 is invalid: must be between 0 (torch's default) and"),
    ("checkpoint.every_n_steps=-5", "error: checkpoint.every_n_steps=-5 is invalid: must be >= 0"),
    ("optimized_metric=val/nope", "error: optimized_metric='val/nope' is invalid: must be one of the logged metrics"),
    ("callbacks.model_checkpoint.monitor=val/nope",
     "error: callbacks.model_checkpoint.monitor='val/nope' is invalid: must be one of the logged metrics"),
    ("device=tpu9", "error: device=tpu9 is invalid: must be one of auto, cpu, ddp_cpu, gpu, multi_gpu"),
    ("device.devices=0", "error: device.devices=0 is invalid: must be an integer >= 1 or 'auto'"),
    ("device.num_nodes=0", "error: device.num_nodes=0 is invalid: must be an integer >= 1"),
    ("device.precision=8-bit", "error: device.precision='8-bit' is invalid: must be one of"),
    ("device=ddp_cpu device.strategy=ddp_spawn", "error: device.strategy='ddp_spawn' is invalid: must be auto or ddp "
                                                 "(ddp_spawn is not supported"),
    ("device=ddp_cpu data.batch_size=5", "error: data.batch_size=5 is invalid: must be divisible by the number of "
                                         "processes (2"),
    ("trainer.max_epochs=0", "error: trainer.max_epochs=0 is invalid: must be an integer >= 1 or -1 or null"),
    ("trainer.val_check_interval=0", "error: trainer.val_check_interval=0 is invalid: must be an integer >= 1"),
    ("trainer.check_val_every_n_epoch=0", "error: trainer.check_val_every_n_epoch=0 is invalid: must be an integer"),
    ("trainer.accumulate_grad_batches=2", "error: trainer.accumulate_grad_batches=2 is invalid: must be 1: truncated"),
    ("trainer.gradient_clip_val=-1", "error: trainer.gradient_clip_val=-1 is invalid: must be a number >= 0"),
    ("trainer.gradient_clip_algorithm=sideways", "error: trainer.gradient_clip_algorithm='sideways' is invalid: "
                                                 "must be norm or value"),
    ("trainer.fast_dev_runn=true", "error: trainer.fast_dev_runn=true is invalid: no such setting (did you mean "
                                   "fast_dev_run?)"),
    ("trainer.limit_train_batches=1.5", "error: trainer.limit_train_batches=1.5 is invalid: must be an integer >= 0"),
    ("trainer.deterministic=maybe", "error: trainer.deterministic='maybe' is invalid: must be true, false, warn"),
    ("trainer.num_sanity_val_steps=-5", "error: trainer.num_sanity_val_steps=-5 is invalid: must be an integer >= -1"),
    ("trainer.min_epochs=-3", "error: trainer.min_epochs=-3 is invalid: must be an integer >= 0 or null"),
    # Types and keys come from the constructors' signatures (signatures.py), ranges from their own checks.
    ("model.net.state_size=abc", "error: model.net.state_size=abc is invalid: must be an integer"),
    ("model.net.dropout=abc", "error: model.net.dropout=abc is invalid: must be a number"),
    ("data.echo_step=abc", "error: data.echo_step=abc is invalid: must be an integer"),
    ("+data.noise=0.1", "error: data.noise=0.1 is invalid: no such setting; EchoDataModule takes total_series_"),
    ("+model.net.nonsense=1", "error: model.net.nonsense=1 is invalid: no such setting; StackedRNN takes cell,"),
    ("trainer.max_epochs=abc", "error: trainer.max_epochs=abc is invalid: must be an integer or null"),
    # One home for the layer count; lightning-hydra-template's spellings say what to type here.
    ("model.net.layers=5", "error: model.net.layers=5 is invalid: is set by layers, its one home: type layers=5"),
    ("seed=null", "error: seed=null is invalid: cannot be null: a run's data and weights follow from its seed"),
    ("trainer=gpu", "error: trainer=gpu is invalid: must be one of default (the device is its own group here: "
                    "device=gpu)"),
    ("trainer=ddp", "error: trainer=ddp is invalid: must be one of default (the device is its own group here: "
                    "device=multi_gpu on GPUs, device=ddp_cpu on CPU)"),
]
# Trainer arguments the app owns elsewhere: refused with where they live.
OWNED = [("trainer.devices=2", "device.devices"), ("trainer.accelerator=gpu", "device.accelerator"),
         ("trainer.strategy=ddp", "device.strategy"), ("trainer.num_nodes=2", "device.num_nodes"),
         ("trainer.precision=16-mixed", "device.precision"), ("trainer.logger=false", "the logger config group"),
         ("trainer.callbacks=[]", "the callbacks config group"), ("trainer.plugins=x", "this app"),
         ("trainer.default_root_dir=/tmp", "hydra.run.dir"), ("trainer.use_distributed_sampler=true", "this app")]


@pytest.mark.parametrize("overrides,line", BAD, ids=[b[0] for b in BAD])
def test_bad_setting_is_one_line_naming_it(overrides, line):
    assert refusal(*overrides.split()).startswith(line)


@pytest.mark.parametrize("override,home", OWNED, ids=[o[0] for o in OWNED])
def test_trainer_arguments_the_app_owns_say_where_they_live(override, home):
    line = refusal(override)
    assert line.startswith(f"error: {override.split('=')[0]}=") and f"is set by {home}" in line


def test_defaults_and_every_config_option_are_valid():
    from echo_lstm.machinery.config import config_groups

    assert validate(compose()) == []
    for group, options in config_groups().items():
        for option in options:
            extra = ["data.batch_size=4"] if option in ("ddp_cpu", "multi_gpu") else []
            if group == "hparams_search":
                continue  # needs the optional Optuna sweeper (tests/test_research.py)
            validate(compose(f"{group}={option}", *extra))


def test_an_echo_longer_than_a_chunk_is_allowed_with_a_warning():
    warnings = validate(compose("data.echo_step=15"))
    assert warnings == ["data.echo_step=15 >= data.truncated_backprop_length=15: every target lies in an earlier "
                        "chunk, beyond the reach of truncated backpropagation"]


@pytest.mark.parametrize("path", ["outputs/runs/2026-01-01_00-00-00", "my runs/it's a \"run\"", "/tmp/a,b=c\\"])
def test_printed_commands_paste_into_a_shell_and_reach_hydra_intact(path):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from echo_lstm.machinery.errors import command, hydra_quote

    line = command("python", "train.py", "resume=" + hydra_quote(path))
    args = shlex.split(line)  # what the shell hands to train.py
    assert args[:2] == ["python", "train.py"]
    assert OverridesParser.create().parse_override(args[2]).value() == path


def test_a_key_added_to_a_yaml_file_of_a_typed_group_is_named_with_its_file(tmp_path):
    # The app's own typed nodes (device, figure, ...): a fork that adds a key to their YAML gets the key and the file,
    # not Hydra's cut-off "ConfigKeyError raised while composing config:".
    (tmp_path / "device").mkdir()
    (tmp_path / "device" / "mine.yaml").write_text("accelerator: cpu\ndevices: 1\nstrategy: auto\nnum_nodes: 1\n"
                                                   "precision: 32-true\nfoo: 1\n")
    line = refusal(f"hydra.searchpath=[file://{tmp_path}]", "device=mine")
    assert line == ("error: device.foo=... (in conf/device/mine.yaml) is invalid: no such setting: DeviceConfig "
                    "(echo_lstm/machinery/config.py) has no foo")
