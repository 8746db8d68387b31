"""What TensorBoard shows, read back from a run's event file: the HParams table's first columns, the figure at the
size of TensorBoard's card, `train/steps_to_echo` as a line and a text card."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import run_train, scalars

pytestmark = pytest.mark.slow

CARD = 350  # px: the width at which TensorBoard's Images and Time Series tabs show an 800 x 450 image (1400 px window)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short run that learns (an easy target) with two overridden hyperparameters."""
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    proc = run_train("layers=1", "target_acc=0.6", "trainer.enable_progress_bar=false", run_dir=run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def accumulator(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_hparams_table_leads_with_the_overridden_keys(run):
    from tensorboard.plugins.hparams import backend_context, plugin_data_pb2

    from echo_lstm.metrics import HPARAMS

    content = accumulator(run).PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert [h.name for h in experiment.hparam_infos][:2] == ["layers", "target_acc"]  # as written
    # TensorBoard's own order (its backend sorts by `differs`, then by name); its table shows the first 5.
    backend_context._sort_and_reduce_to_hparams_limit(experiment)
    shown = [h.name for h in experiment.hparam_infos][:5]
    assert shown[:2] == ["layers", "target_acc"], shown
    assert {h.name for h in experiment.hparam_infos if h.differs} == {"layers", "target_acc"}
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS)  # all shown (the first 5 are)


def test_overridden_hyperparameters_of_a_group_and_of_a_key():
    from echo_lstm.machinery.loggers import overridden

    params = {"layers": 3, "optimizer._target_": "SGD", "optimizer.lr": 0.1, "optimizer_x": 1, "seed": 1}
    assert overridden(params, ["optimizer=sgd", "+seed=2", "trainer.max_steps=9"]) == \
        ["optimizer._target_", "optimizer.lr", "seed"]
    assert overridden(params, []) == []


def test_the_figure_is_legible_on_tensorboards_card(run):
    from PIL import Image

    images = accumulator(run).Images("echo/chunk")
    image = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"))
    height, width = image.shape
    assert (width, height) == (800, 450)
    # The title line's height: its ink rows at the top (text is dark grey on white), scaled to the card.
    ink = (image < 128).any(axis=1)
    first = int(np.argmax(ink))
    title = int(np.argmin(ink[first:]))  # up to the first blank row
    assert title * CARD / width >= 7, f"the title is {title * CARD / width:.1f} px high on the card"


def test_steps_to_echo_is_a_line_and_a_text_card(run):
    value = json.loads((run / "result.json").read_text())["metrics"]["train/steps_to_echo"]
    step = int(value)
    assert scalars(run)["train/steps_to_echo"] == [(0, value), (step, value)]  # one point would draw no line
    texts = accumulator(run).Tensors("train/steps_to_echo/text_summary")  # the Text tab
    assert [t.step for t in texts] == [step]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert text.startswith(f"**{step}** steps") and "target_acc 0.6" in text, text
