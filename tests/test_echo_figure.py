"""The tutorial's echo figure (echo_lstm.machinery.viz.echo_figure):
bars and curve where they belong, edge cases, its PNG."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from echo_lstm.machinery.viz.echo_figure import (
    BLUE,
    GREEN,
    LOSS,
    PALETTE,
    RED,
    EchoFigureDrawer,
)

COLOURS = {name: PALETTE[index] for name, index in (("blue", BLUE), ("red", RED), ("green", GREEN), ("loss", LOSS))}


def echo_chunk(streams: int = 5, T: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk of the echo task (the input 3 steps later) and a perfect prediction."""
    x = np.random.default_rng(seed).integers(0, 2, (streams, T))
    y = np.roll(x, 3, axis=1)
    y[:, :3] = 0
    return x, y, y.copy()


def curve(n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(n)
    return steps, 0.69 * np.exp(-steps / 400) + 0.01


def draw_echo_figure(*args: np.ndarray, width: int = 800, height: int = 450, title: str = "") -> np.ndarray:
    """One figure from a fresh drawer."""
    return EchoFigureDrawer(width, height).draw(*args, title=title)


def panel(img: np.ndarray, drawer: EchoFigureDrawer, i: int) -> np.ndarray:
    top, bottom, left, right = drawer.boxes[i]
    return img[top:bottom, left:right]


def is_colour(pixels: np.ndarray, name: str) -> np.ndarray:
    return np.all(pixels == COLOURS[name], axis=-1)


def expected_columns(values: np.ndarray, width: int) -> np.ndarray:
    """Per pixel column of a panel: is the bar of its time step nonzero."""
    return values[np.arange(width) * len(values) // width] > 0


def test_size_dtype_and_not_blank():
    img = draw_echo_figure(*echo_chunk(), *curve(), title="step 128, epoch 0")
    assert img.shape == (450, 800, 3) and img.dtype == np.uint8
    assert (img == 255).all(axis=-1).mean() > 0.5  # a white background
    grey = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2]) & (img[..., 0] < 128)
    assert grey[:20].any() and grey[20:].any()  # the title, the frames and labels


def test_bars_where_the_data_says():
    x, y, _ = echo_chunk()
    pred = np.random.default_rng(1).integers(0, 2, x.shape).astype(np.float32)
    drawer = EchoFigureDrawer()
    img = drawer.draw(x, y, pred, *curve())
    for s in range(len(x)):
        bars = panel(img, drawer, 1 + s)
        width = bars.shape[1]
        for name, values in (("blue", x[s]), ("red", y[s]), ("green", pred[s])):
            shown = is_colour(bars, name).any(axis=0)
            np.testing.assert_array_equal(shown, expected_columns(values, width), err_msg=f"{name}, stream {s}")
        colour = np.any([is_colour(bars, name) for name in ("blue", "red", "green")], axis=0)
        assert not colour[: bars.shape[0] // 2].any()  # the y axis is 0..2: bars in the lower half only


def test_learned_echo_shows_green_exactly_over_red():
    x, y, pred = echo_chunk()
    drawer = EchoFigureDrawer()
    img = drawer.draw(x, y, pred, *curve())
    for s in range(len(x)):
        bars = panel(img, drawer, 1 + s)
        red, green = is_colour(bars, "red"), is_colour(bars, "green")
        np.testing.assert_array_equal(green.any(axis=0), red.any(axis=0))
        for c in np.flatnonzero(green.any(axis=0)):  # from the bottom: green (0.3), then red up to 0.5, then blue
            column = bars[::-1, c]
            n_green = int(is_colour(column, "green").sum())
            assert is_colour(column[:n_green], "green").all()
            assert is_colour(column[n_green:n_green + 2], "red").all()
    pred[0] = 1 - y[0]  # a wrong prediction: green where there is no red
    img = drawer.draw(x, y, pred, *curve())
    bars = panel(img, drawer, 1)
    assert (is_colour(bars, "green").any(axis=0) & ~is_colour(bars, "red").any(axis=0)).any()


def test_loss_curve_is_drawn_across_its_panel():
    drawer = EchoFigureDrawer()
    img = drawer.draw(*echo_chunk(), *curve())
    loss = panel(img, drawer, 0)
    line = is_colour(loss, "loss")
    assert line.any(axis=0).all()  # every column: the curve spans all steps
    assert line[:, 0].any() and np.flatnonzero(line[:, 0]).min() < np.flatnonzero(line[:, -1]).min()  # it falls
    assert not np.any([is_colour(loss, name) for name in ("blue", "red", "green")])


def test_non_finite_losses_are_skipped():
    steps, losses = curve()
    losses[::7], losses[3::11], losses[5::13] = np.nan, np.inf, -np.inf
    finite = np.isfinite(losses)
    np.testing.assert_array_equal(draw_echo_figure(*echo_chunk(), steps, losses),
                                  draw_echo_figure(*echo_chunk(), steps[finite], losses[finite]))


@pytest.mark.parametrize("steps, losses", [
    ([], []),
    ([1, 2, 3, 4], [np.nan, 0.5, np.inf, 0.4]),
    ([1, 2, 3], [np.nan, np.nan, -np.inf]),
    ([7], [0.3]),
    (np.arange(100), np.full(100, 0.25)),  # constant
    (np.arange(100), np.zeros(100)),
    (np.arange(100), -np.linspace(1, 2, 100)),
])
def test_odd_loss_curves_draw(steps, losses):
    drawer = EchoFigureDrawer()
    img = drawer.draw(*echo_chunk(), np.asarray(steps), np.asarray(losses, dtype=np.float32))
    finite = np.isfinite(np.asarray(losses, dtype=float)).sum()
    assert is_colour(panel(img, drawer, 0), "loss").any() == (finite > 0)


@pytest.mark.parametrize("width, height, streams, T", [
    (100, 100, 5, 15), (100, 100, 16, 200), (900, 500, 16, 200), (900, 500, 1, 1), (150, 1000, 3, 7), (1, 1, 2, 2),
])
def test_sizes_and_shapes_never_crash(width, height, streams, T):
    x, y, pred = echo_chunk(streams, T)
    img = draw_echo_figure(x, y, pred, *curve(), width=width, height=height, title="a long title " * 10)
    assert img.shape == (height, width, 3) and img.dtype == np.uint8


def test_any_dtype_and_a_reused_drawer_give_the_same_picture():
    x, y, pred = echo_chunk()
    expected = draw_echo_figure(x, y, pred, *curve(), title="t")
    drawer = EchoFigureDrawer()
    drawer.draw(*echo_chunk(16, 200), [], [], title="another shape first")
    for cast in (np.float32, np.float64, np.int8, bool):
        np.testing.assert_array_equal(drawer.draw(x.astype(cast), y.astype(cast), pred.astype(cast), *curve(), "t"),
                                      expected)


def test_png_decodes_to_the_same_pixels():
    drawer = EchoFigureDrawer(640, 360)
    args = (*echo_chunk(), *curve(), "step 3")
    img = drawer.draw(*args)
    png, height, width = drawer.draw_png(*args)
    assert (height, width) == (360, 640)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), img)


def test_imports_neither_torch_nor_lightning_nor_matplotlib():
    code = ("import sys, echo_lstm.machinery.viz.echo_figure; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'pytorch_lightning', 'lightning', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
