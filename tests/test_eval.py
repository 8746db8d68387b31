"""eval.py: the numbers against an evaluation written here from scratch, a real property of a trained model, and
the error promise (one `error:` line, exit 2, nothing left behind) for every mistake, a stranger's file included.

The slow tests share one model trained in-process (the default config, 1500 steps); the error tests use
checkpoints built by hand (plain torch modules), so they need no training. eval.py runs as a user runs it, in a
subprocess; several at once, as most of each one's time goes into importing torch and Lightning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose

EVAL_SPLIT = 2  # evaluation series: np.random.default_rng([seed, 2, 0, stream]) (echo_lstm/machinery/evaluation.py)
METRICS = ("acc", "boundary_acc", "interior_acc", "loss", "reset_boundary_acc", "reset_acc")
KEYS = {*METRICS, "streams", "steps", "chunks", "echo_step", "chunk_length", "seed", "ckpt_path", "trained_step"}


def run_eval(*args: str) -> subprocess.CompletedProcess:
    """`python eval.py ARGS` as a user runs it (without a HYDRA_FULL_ERROR of the caller's)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, str(REPO / "eval.py"), *args], cwd=REPO, capture_output=True, text=True,
                          env={**env, "PYTHONUNBUFFERED": "1"}, timeout=300)


def run_side_by_side(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Several eval.py runs at once: each spends ~3 s importing torch and Lightning, most of its time."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_eval, *args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def result(proc: subprocess.CompletedProcess, out: Path) -> dict:
    """eval.json of a run that succeeded, with what it printed."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = json.loads((out / "eval.json").read_text())
    assert set(written) == KEYS
    return {**written, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run dir of the default config trained in-process until early stopping: the echo is learned (at 128-1460
    steps over CPUs and seeds, docs/research.md; 4000 is a budget with room)."""
    from echo_lstm.training import train

    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose("trainer.enable_progress_bar=false", "trainer.max_steps=4000", run_dir=run_dir)
    train(cfg)
    return {"dir": run_dir, "last": run_dir / "checkpoints" / "last.ckpt", "seed": cfg.seed}


OVERRIDES = ("chunk_length=10", "echo_step=2", "seed=99", "streams=2", "length=2005")


@pytest.fixture(scope="module")
def evals(trained, tmp_path_factory):
    """eval.py on the trained model: its defaults on the run dir and on its last.ckpt, and with OVERRIDES."""
    out = tmp_path_factory.mktemp("evals")
    commands = {"dir": [f"ckpt_path={trained['dir']}"], "file": [f"ckpt_path={trained['last']}"],
                "overrides": [f"ckpt_path={trained['last']}", *OVERRIDES]}
    procs = run_side_by_side({name: [*args, f"hydra.run.dir={out / name}"] for name, args in commands.items()})
    return {name: result(proc, out / name) for name, proc in procs.items()}


# ------------------------------------------------------------------------------------- an independent evaluation
def echo_series(seed: int, streams: int, steps: int, echo_step: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: per stream, bits (p = 0.5) from default_rng([seed, split, epoch 0, stream]); the
    target is the input delayed by echo_step (0 before the series)."""
    x = np.stack([np.random.default_rng([seed, EVAL_SPLIT, 0, s]).integers(0, 2, size=steps) for s in range(streams)])
    y = np.zeros_like(x)
    y[:, echo_step:] = x[:, : steps - echo_step]
    return x, y


def plain_lstm(ckpt_file: Path) -> tuple[torch.nn.LSTM, torch.nn.Linear]:
    """The checkpoint's weights in torch's own LSTM and Linear, copied by name (not through the project's classes)."""
    weights = torch.load(ckpt_file, weights_only=True)["state_dict"]
    rnn = {k.removeprefix("net.rnn."): v for k, v in weights.items() if k.startswith("net.rnn.")}
    head = {k.removeprefix("net.head."): v for k, v in weights.items() if k.startswith("net.head.")}
    size, layers = rnn["weight_hh_l0"].shape[1], sum(k.startswith("weight_ih_l") for k in rnn)
    lstm, linear = torch.nn.LSTM(1, size, layers, batch_first=True), torch.nn.Linear(size, 2)
    lstm.load_state_dict(rnn)
    linear.load_state_dict(head)
    return lstm.eval(), linear.eval()


def expected(ckpt_file: Path, seed: int, streams: int, steps: int, T: int, echo_step: int) -> dict[str, float]:
    lstm, linear = plain_lstm(ckpt_file)
    x, y = echo_series(seed, streams, steps, echo_step)
    logits = {"carried": [], "reset": []}
    with torch.no_grad():
        hc = None
        for k in range(steps // T):
            inputs = torch.from_numpy(x[:, k * T : (k + 1) * T]).float().unsqueeze(-1)
            out, hc = lstm(inputs, hc)  # (h, c) carried to the next chunk
            logits["carried"].append(linear(out).numpy())
            logits["reset"].append(linear(lstm(inputs)[0]).numpy())  # from zeros at every chunk
    t = np.arange(steps)
    valid = np.broadcast_to(t >= echo_step, y.shape)
    earlier_chunk = np.broadcast_to((t - echo_step) // T < t // T, y.shape)  # where the echoed input lies
    result = {}
    for run, prefix in (("carried", ""), ("reset", "reset_")):
        z = np.concatenate(logits[run], axis=1).astype(np.float64)  # [streams, steps, 2]
        correct = z.argmax(-1) == y
        result[f"{prefix}acc"] = correct[valid].mean()
        result[f"{prefix}boundary_acc"] = correct[valid & earlier_chunk].mean()
        result[f"{prefix}interior_acc"] = correct[valid & ~earlier_chunk].mean()
        log_p = z - np.logaddexp(z[..., 0], z[..., 1])[..., None]
        result[f"{prefix}loss"] = -np.take_along_axis(log_p, y[..., None], -1)[..., 0][valid].mean()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dir", "overrides"])
def test_metrics_match_an_independent_evaluation(trained, evals, name):
    got = evals[name]
    want = expected(trained["last"], got["seed"], got["streams"], got["steps"], got["chunk_length"], got["echo_step"])
    for metric in METRICS:
        assert got[metric] == pytest.approx(want[metric], abs=1e-6), metric
    # The overrides, else the checkpoint's echo_step and T; whole chunks only.
    shape = (got["chunk_length"], got["echo_step"], got["steps"], got["chunks"], got["streams"])
    assert shape == ((10, 2, 2000, 200, 2) if name == "overrides" else (15, 3, 9990, 666, 5))


@pytest.mark.learning
@pytest.mark.slow
def test_a_trained_model_echoes_across_chunk_boundaries_only_with_the_carried_state(trained, evals):
    got = evals["dir"]
    assert got["boundary_acc"] >= 0.99
    assert got["reset_boundary_acc"] < 0.7  # its target lies in the previous chunk: a reset state can only guess
    assert got["interior_acc"] >= 0.99
    assert got["trained_step"] == torch.load(trained["last"], weights_only=True)["global_step"]


@pytest.mark.slow
def test_the_default_seed_is_not_the_training_seed(trained, evals):
    assert evals["dir"]["seed"] != trained["seed"]
    assert evals["dir"]["seed"] == trained["seed"] + 1  # the documented rule
    assert evals["overrides"]["seed"] == 99


@pytest.mark.slow
def test_a_run_dir_is_evaluated_as_its_last_checkpoint(trained, evals):
    assert evals["dir"]["ckpt_path"] == str(trained["last"].resolve())
    assert {k: v for k, v in evals["dir"].items() if k != "stdout"} == \
        {k: v for k, v in evals["file"].items() if k != "stdout"}


@pytest.mark.slow
def test_output_is_a_table_of_every_value(evals):
    lines = evals["dir"]["stdout"].splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert {line.split()[0] for line in lines[1:-1]} == KEYS
    assert lines[-1].startswith("written: ") and lines[-1].endswith("eval.json")


# ------------------------------------------------------------------------------------------------- the errors
class Opens:
    """A pickled object that, if unpickled, creates a file: a stand-in for a stranger's code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def hand_made(path: Path, net: dict | None = None, size: int = 4, **extra) -> Path:
    """A checkpoint as train.py writes one (plain data), of an untrained 2-layer LSTM of `size` units."""
    lstm, head = torch.nn.LSTM(1, size, 2, batch_first=True), torch.nn.Linear(size, 2)
    state_dict = {**{f"net.rnn.{k}": v for k, v in lstm.state_dict().items()},
                  **{f"net.head.{k}": v for k, v in head.state_dict().items()}}
    net = net or {"_target_": "echo_lstm.models.net.StackedRNN", "cell": "lstm", "layers": 2, "state_size": size,
                  "dropout": 0.0, "forget_bias": 0.0}
    hyper_parameters = {"net": net, "echo_step": 3, "truncated_backprop_length": 15}
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters, "global_step": 7,
                "datamodule_hyper_parameters": {"seed": 1234}, "echo_train_state": None, **extra}, path)
    return path


def corrupt(m: dict) -> Path:
    data = m["ckpt"].read_bytes()
    (m["tmp"] / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return m["tmp"] / "cut.ckpt"


def dir_without_last(m: dict) -> Path:
    (m["tmp"] / "run" / "checkpoints").mkdir(parents=True)
    (m["tmp"] / "run" / "checkpoints" / "best-step5.ckpt").write_bytes(m["ckpt"].read_bytes())
    return m["tmp"] / "run"


def code_target(m: dict) -> Path:  # instantiated blindly, this would call open(sentinel, "w")
    return hand_made(m["tmp"] / "t.ckpt", net={"_target_": "builtins.open", "file": str(m["sentinel"]), "mode": "w"})


def nested_target(m: dict) -> Path:  # a known target, but an argument that Hydra would instantiate first
    net = {"_target_": "echo_lstm.models.net.StackedRNN", "layers": 2, "state_size": 4,
           "cell": {"_target_": "builtins.open", "file": str(m["sentinel"]), "mode": "w"}}
    return hand_made(m["tmp"] / "n.ckpt", net=net)


def extra_weight(m: dict) -> Path:
    path = hand_made(m["tmp"] / "e.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["net.rnn.weight_ih_l9"] = torch.zeros(16, 4)
    torch.save(ckpt, path)
    return path


def misfit(m: dict) -> Path:  # weights of 4 units, a config of 4096: refused before allocating the network
    net = {"_target_": "echo_lstm.models.net.StackedRNN", "cell": "lstm", "layers": 2, "state_size": 4096}
    return hand_made(m["tmp"] / "m.ckpt", net=net)


ERRORS = {  # name: (the arguments, given a case's files `m`; words the error line must hold)
    "no ckpt_path": (lambda m: [], ["ckpt_path", "required"]),
    "a path that does not exist": (lambda m: [f"ckpt_path={m['tmp'] / 'nope.ckpt'}"], ["no such file"]),
    "a dir without last.ckpt": (lambda m: [f"ckpt_path={dir_without_last(m)}"], ["checkpoints/last.ckpt"]),
    "a corrupt file": (lambda m: [f"ckpt_path={corrupt(m)}"], ["not a readable checkpoint"]),
    "a pickle with code": (lambda m: [f"ckpt_path={hand_made(m['tmp'] / 'p.ckpt', x=Opens(m['sentinel']))}"],
                           ["could run code"]),
    "an unknown _target_": (lambda m: [f"ckpt_path={code_target(m)}"], ["builtins.open", "not one this app builds"]),
    "a _target_ inside the network's arguments": (lambda m: [f"ckpt_path={nested_target(m)}"], ["'cell'", "plain"]),
    "weights that do not fit the network": (lambda m: [f"ckpt_path={misfit(m)}"], ["shape"]),
    "a weight the network does not have": (lambda m: [f"ckpt_path={extra_weight(m)}"], ["weight_ih_l9"]),
    "streams=0": (lambda m: [f"ckpt_path={m['ckpt']}", "streams=0"], ["streams=0"]),
    "length shorter than one chunk": (lambda m: [f"ckpt_path={m['ckpt']}", "length=14"], ["length=14", "chunk"]),
    "the training seed": (lambda m: [f"ckpt_path={m['ckpt']}", "seed=1234"], ["seed=1234", "training seed"]),
    "device=gpu without a GPU": (lambda m: [f"ckpt_path={m['ckpt']}", "device=gpu"], ["device.accelerator", "CUDA"]),
}
GOOD = "the hand-made checkpoint itself"  # the control: the cases above differ from it only in what they break


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Every case of ERRORS (and GOOD) run once, side by side, each in a dir of its own: (files, process)."""
    cases, commands = {}, {}
    for name, (arguments, _) in [*ERRORS.items(), (GOOD, (lambda m: [f"ckpt_path={m['ckpt']}", "length=300"], []))]:
        tmp = tmp_path_factory.mktemp("case")
        m = {"tmp": tmp, "ckpt": hand_made(tmp / "good.ckpt"), "sentinel": tmp / "ran-code", "out": tmp / "out"}
        cases[name] = m
        commands[name] = [*arguments(m), f"hydra.run.dir={m['out']}"]
    procs = run_side_by_side(commands)
    return {name: (cases[name], procs[name]) for name in cases}


@pytest.mark.slow  # (the fixture runs every case: ~10 s of imports on 2 cores)
@pytest.mark.parametrize("case", list(ERRORS))
def test_each_mistake_is_one_error_line_and_leaves_nothing(refusals, case):
    if case == "device=gpu without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    m, proc = refusals[case]
    text = proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, text[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), text[-3000:]
    assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text
    assert all(word in lines[0] for word in ERRORS[case][1]), lines[0]
    assert not m["out"].exists()
    assert not m["sentinel"].exists()  # no code of the checkpoint's ran


@pytest.mark.slow
def test_the_hand_made_checkpoint_itself_is_evaluated(refusals):
    m, proc = refusals[GOOD]
    got = result(proc, m["out"])
    assert (got["seed"], got["trained_step"], got["steps"], got["ckpt_path"]) == (1235, 7, 300, str(m["ckpt"]))


def test_an_output_dir_that_is_not_empty_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_eval(f"ckpt_path={hand_made(tmp_path / 'good.ckpt')}", f"hydra.run.dir={out}")
    assert proc.returncode == 2 and proc.stderr.startswith("error: hydra.run.dir="), proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_help_shows_the_settings_and_their_defaults():
    proc = run_eval("--help")
    assert proc.returncode == 0 and "ckpt_path: null" in proc.stdout and "length: 10000" in proc.stdout, proc.stderr
