"""The sweep summary's picture (echo_lstm.machinery.viz.summary_plot):
written when there is something to plot, and showing it."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from echo_lstm.machinery.viz.summary_plot import plot_sweep_summary

METRIC, STEPS = "val/boundary_acc", "train/steps_to_echo"


def job(num: int, values: dict[str, str], acc: float | None = None, steps: float | None = None,
        status: str = "completed") -> dict:
    metrics = {k: v for k, v in ((METRIC, acc), (STEPS, steps)) if v is not None}
    return {"job": num, "status": status, "values": values, "metrics": metrics}


def layers_jobs(accs: tuple[float, ...] = (0.6, 0.97, 0.99, 0.98)) -> list[dict]:
    """Layers 1, 2, 3, 5 (1 never learned) and a failed job at 8."""
    steps = (math.inf, 1800, 1200, 2600)
    jobs = [job(i, {"model.num_layers": n}, a, s) for i, (n, a, s) in enumerate(zip("1235", accs, steps, strict=True))]
    return [*jobs, job(4, {"model.num_layers": "8"}, status="failed")]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def check_picture(path: Path | None, expected: Path) -> np.ndarray:
    assert path == expected and expected.is_file()
    rgb = pixels(expected)
    height, width, _ = rgb.shape
    assert 800 <= width <= 1200 and 350 <= height <= 500
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, "blank picture"
    return rgb


def cell_colours(rgb: np.ndarray, min_pixels: int = 1000) -> set[tuple[int, ...]]:
    """Saturated colours that fill large areas: heatmap cells (colorbar levels, lines and text are small or grey)."""
    flat = rgb.reshape(-1, 3).astype(int)
    counts = Counter(map(tuple, flat[np.ptp(flat, axis=1) > 30]))
    return {colour for colour, n in counts.items() if n >= min_pixels}


def test_one_numeric_key_with_never_and_failed(tmp_path):
    out = tmp_path / "summary.png"
    first = check_picture(plot_sweep_summary(layers_jobs(), ["model.num_layers"], METRIC, out), out)
    # The picture shows the values: other metric values, another picture.
    again = tmp_path / "again.png"
    second = check_picture(plot_sweep_summary(layers_jobs((0.9, 0.5, 0.7, 0.6)), ["model.num_layers"], METRIC,
                                              again), again)
    assert first.shape == second.shape and (first != second).any()


def test_one_categorical_key(tmp_path):
    jobs = [job(0, {"model.carry_state": "true"}, 0.99, 900), job(1, {"model.carry_state": "false"}, 0.55, math.inf)]
    out = tmp_path / "summary.png"
    check_picture(plot_sweep_summary(jobs, ["model.carry_state"], METRIC, out, title="carry"), out)


def heatmap_jobs(vary: bool = True) -> list[dict]:
    """echo_step 1..8 x carry_state: learned for short echoes (and with carried state), never otherwise."""
    jobs = []
    for e, carry in itertools.product(range(1, 9), ("true", "false")):
        learned = e <= (6 if carry == "true" else 2)
        acc = (0.99 - 0.01 * e if learned else 0.5 + 0.02 * e) if vary else 0.9
        steps = (300 * e if vary else 500) if learned else math.inf
        jobs.append(job(len(jobs), {"data.echo_step": str(e), "model.carry_state": carry}, acc, steps))
    jobs[5] = job(5, jobs[5]["values"], status="failed")
    return jobs


def best_colour_height(half: np.ndarray) -> float:
    """Mean height (0: top, 1: bottom) of the pixels in the colormap's "better" colour (viridis' yellow end)."""
    from matplotlib import colormaps

    yellow = np.array(colormaps["viridis"](1.0)[:3]) * 255
    rows, _ = np.nonzero(np.abs(half.astype(float) - yellow).max(axis=2) <= 3)
    assert len(rows) >= 1000, "no cell in the better colour"
    return rows.mean() / half.shape[0]


def test_two_keys_heatmap_colours_follow_values(tmp_path):
    out = tmp_path / "summary.png"
    rgb = check_picture(plot_sweep_summary(heatmap_jobs(), ["data.echo_step", "model.carry_state"], METRIC, out), out)
    assert len(cell_colours(rgb)) >= 4, "cells of different values must take different colours"
    # "Better" is one colour in both heatmaps: the best accuracy and the fewest steps are both at echo_step 1 (top).
    left, right = rgb[:, : rgb.shape[1] // 2], rgb[:, rgb.shape[1] // 2 :]
    assert best_colour_height(left) < 0.3 and best_colour_height(right) < 0.3
    # Minimizing the same numbers: the better colour moves to the lowest accuracy (echo_step 4, further down).
    low = tmp_path / "low.png"
    rgb = pixels(plot_sweep_summary(heatmap_jobs(), ["data.echo_step", "model.carry_state"], METRIC, low,
                                    direction="minimize"))
    assert best_colour_height(rgb[:, : rgb.shape[1] // 2]) > 0.35
    flat = tmp_path / "flat.png"
    rgb = check_picture(plot_sweep_summary(heatmap_jobs(vary=False), ["data.echo_step", "model.carry_state"],
                                           METRIC, flat, direction="minimize"), flat)
    assert len(cell_colours(rgb)) <= 2, "equal values: one colour per heatmap"


def test_three_keys_and_duplicates(tmp_path):
    keys = ["data.echo_step", "model.carry_state", "seed"]
    jobs = [job(i, dict(zip(keys, values, strict=True)), 0.5 + 0.1 * i % 0.5, 100 * i or math.inf)
            for i, values in enumerate(itertools.product("124", ("true", "false"), "01"))]
    jobs += [job(99, {keys[0]: "1", keys[1]: "true", keys[2]: "0"}, float("nan")),  # a duplicate, NaN metric
             job(100, {keys[0]: "2"}, status="failed")]  # a key missing
    out = tmp_path / "three.png"
    check_picture(plot_sweep_summary(jobs, keys, METRIC, out), out)
    one = tmp_path / "one.png"  # duplicates over the one key: the best of each
    check_picture(plot_sweep_summary(jobs, keys[:1], METRIC, one, direction="minimize"), one)


def test_nothing_to_plot(tmp_path):
    out = tmp_path / "summary.png"
    assert plot_sweep_summary(layers_jobs(), [], METRIC, out) is None
    failed = [{**j, "status": "failed"} for j in layers_jobs()]
    assert plot_sweep_summary(failed, ["model.num_layers"], METRIC, out) is None
    assert plot_sweep_summary(layers_jobs(), ["model.num_layers"], "val/not_logged", out) is None
    assert plot_sweep_summary([], ["model.num_layers"], METRIC, out) is None
    assert list(tmp_path.iterdir()) == []


def test_import_is_light():
    code = ("import sys, echo_lstm.machinery.viz.summary_plot; "
            "print([m for m in ('matplotlib', 'torch', 'pytorch_lightning', 'lightning') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
