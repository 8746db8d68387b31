"""A fork's four ordinary changes, each made in a fresh copy of the repository as a newcomer would make it: the file
that holds the thing, at most one YAML and the fork's own test. Each then runs through `train.py`, its bad value is
one `error:` line, and the guards that used to need hand-kept lists elsewhere (the metrics registry, the list of
optimizers) still pass. The README's "Where to change what" rows name exactly the files changed here."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY, scalars

pytestmark = pytest.mark.slow

METRIC_TEST = '''
import torch
from echo_lstm.metrics import chunk_metrics, find

def test_the_share_of_predicted_ones():
    y = torch.zeros(2, 3, 5, dtype=torch.long)
    assert chunk_metrics("train", torch.tensor(0.0), torch.ones_like(y), y, 0, 3)["train/ones"] == 1.0
    assert find("val/ones").better == "max"
'''
NET_TEST = '''
import torch
from echo_lstm.models.net import StackedRNN

def test_layer_norm_keeps_the_packed_state():
    net = StackedRNN("lstm", 2, 4, layer_norm=True)
    logits, state = net(torch.zeros(3, 5), None)
    assert logits.shape == (3, 5, 2) and state.shape == (2, 2, 3, 4) and net.norm is not None
'''
DATA_TEST = '''
from echo_lstm.data.echo import EchoDataModule

def test_flipped_inputs():
    clean = EchoDataModule(6000, 2, 5, 3, 4, 100, seed=1).make_epoch(0)[0]
    noisy = EchoDataModule(6000, 2, 5, 3, 4, 100, seed=1, flip_prob=0.25).make_epoch(0)[0]
    assert 0.15 < (clean != noisy).float().mean() < 0.35
'''
OPTIMIZER_TEST = '''
from conftest import compose

def test_asgd():
    assert compose("optimizer=asgd").optimizer._target_ == "torch.optim.ASGD"
'''



def before(anchor, text):
    return anchor, text + anchor


def after(anchor, text):
    return anchor, anchor + text


# name: {file: [(anchor, replacement)] or the whole new file}, the fork's test, a run's overrides, a bad value and
# the start of its line, the guards to run again.
CHANGES = {
    "a metric": dict(
        edits={"src/echo_lstm/metrics.py": [
            before('    Metric("train/steps_to_echo",',
                   '    Metric("*/ones", "max", "train batch", False, False, "share of predicted ones"),\n'),
            after('        f"{stage}/interior_acc": masked_acc(correct, valid & ~boundary),\n',
                  '        f"{stage}/ones": preds.float().mean(),\n')]},
        test=METRIC_TEST, run=["optimized_metric=val/ones", "callbacks.model_checkpoint.monitor=val/ones"],
        logged=["train/ones", "val/ones"], bad=("optimized_metric=val/twos", "error: optimized_metric='val/twos'"),
        guards=["tests/test_learning.py::test_carried_state_is_what_learns_the_boundary_while_training"]),
    "an optimizer": dict(
        edits={"conf/optimizer/asgd.yaml": "_target_: torch.optim.ASGD\n_partial_: true\nlr: 0.05\n"},
        test=OPTIMIZER_TEST, run=["optimizer=asgd"], logged=[],
        bad=("optimizer.lrr=1", "error: optimizer.lrr=1 is invalid: no such setting (did you mean lr"),
        guards=["tests/test_config_errors.py"]),
    "a network option": dict(
        edits={"src/echo_lstm/models/net.py": [
            ("forget_bias: float = 0.0):", "forget_bias: float = 0.0, layer_norm: bool = False):"),
            after("        self.head = nn.Linear(state_size, 2)\n",
                  "        self.norm = nn.LayerNorm(state_size) if layer_norm else None\n"),
            after("        out, hidden = self.rnn(inputs, hidden)\n",
                  "        if self.norm is not None:\n            out = self.norm(out)\n")],
            "conf/model/lstm.yaml": [before("  forget_bias: 0.0", "  layer_norm: false\n")]},
        test=NET_TEST, run=["model.net.layer_norm=true"], logged=[],
        bad=("model.net.layer_norm=maybe", "error: model.net.layer_norm=maybe is invalid: must be true or false"),
        guards=["tests/test_model.py"]),
    "a data option": dict(
        edits={"src/echo_lstm/data/echo.py": [
            ("        seed: int,\n    ):", "        seed: int,\n        flip_prob: float = 0.0,\n    ):"),
            before("        self.save_hyperparameters(logger=False)\n",
                   '        check(0 <= flip_prob < 1, "flip_prob", flip_prob, "must be in [0, 1)")\n'),
            before("        T, device = h.truncated_backprop_length, self._device()\n",
                   "        if h.flip_prob:  # noisy inputs, clean targets\n"
                   "            flips = torch.rand(x.shape, generator=torch.Generator().manual_seed(h.seed + epoch))\n"
                   "            x = torch.where(flips < h.flip_prob, 1 - x, x)\n")],
            "conf/data/echo.yaml": [before("seed: ${seed}", "flip_prob: 0.0  # inputs flipped at random\n")]},
        test=DATA_TEST, run=["data.flip_prob=0.1"], logged=[],
        bad=("data.flip_prob=2", "error: data.flip_prob=2 is invalid: must be in [0, 1)"),
        guards=["tests/test_data.py"]),
}


def fork(tmp_path):
    """A copy of the repository as a fork starts (git-tracked, so the change's files can be listed)."""
    copy = tmp_path / "fork"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv*", ".git", "outputs", "__pycache__", "*.egg-info",
                                                                ".pytest_cache", ".ruff_cache"))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=f", "-c", "user.email=f@f", "commit", "-qm", "fork"]):
        subprocess.run(["git", *args], cwd=copy, check=True)
    return copy


def run(copy, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600,
                          **kwargs)


def readme_row(name):
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| {name} |"))
    return set(re.findall(r"`((?:src|conf|tests)/[^`]+)`", row))


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_fork_changes_one_file_one_yaml_and_its_test(tmp_path, name):
    change = CHANGES[name]
    copy = fork(tmp_path)
    for path, edit in change["edits"].items():
        target = copy / path
        if isinstance(edit, str):
            target.write_text(edit)
            continue
        text = target.read_text()
        for anchor, replacement in edit:
            assert text.count(anchor) == 1, f"{path}: the fork test's anchor moved: {anchor!r}"
            text = text.replace(anchor, replacement)
        target.write_text(text)
    own_test = copy / "tests" / f"test_my_{name.split()[-1]}.py"
    own_test.write_text(change["test"])
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    changed = sorted(line[3:] for line in status if line.strip())
    sources = [p for p in changed if p.startswith("src/")]
    yamls = [p for p in changed if p.startswith("conf/")]
    assert len(sources) <= 1 and len(yamls) <= 1 and len(changed) == len(sources) + len(yamls) + 1, changed
    assert readme_row(name) == set(sources + yamls), f"README's row for {name} names other files than {changed}"

    proc = run(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", str(own_test.relative_to(copy)),
               *change["guards"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    run_dir = tmp_path / "run"
    proc = run(copy, "train.py", *TINY, "trainer.max_epochs=1", *change["run"], f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = scalars(run_dir)
    assert all(tag in logged for tag in change["logged"]), sorted(logged)
    key, line = change["bad"]
    proc = run(copy, "train.py", *TINY, key, f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()
