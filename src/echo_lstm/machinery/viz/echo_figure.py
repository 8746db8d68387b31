"""The tutorial's echo figure, drawn with numpy and Pillow: cheap enough to draw inline while training.

A title with the legend, the training loss so far, and per stream the current chunk as bars on a 0..2 axis:
input (blue, height 1), target (red, 0.5) over it, prediction (green, 0.3) on top; a learned echo shows red and
green bars that coincide. Sized for TensorBoard's card (~350 x 200 px, 0.44 of 800 x 450): one column of panels,
few labels, a font 1/18 of the height. Not matplotlib: its ~40 ms a figure is too much for the training process,
and a process pool to hide it breaks under some launchers. Here the static layout is drawn once per shape and a
figure copies it and draws only the data: 1-2 ms (800x450, PNG included). Imports only numpy and PIL.

The picture is palette indices (a "P" PNG). Indices 5..255 are the greys of their level, so PIL draws antialiased
text straight into it in mode "L": a blend of white (255) and the ink (20) stays a grey.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLUE, RED, GREEN, LOSS, INK, WHITE = 1, 2, 3, 4, 20, 255  # palette indices
PALETTE = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
PALETTE[[BLUE, RED, GREEN, LOSS]] = [(0, 0, 255), (255, 0, 0), (0, 160, 0), (31, 119, 180)]
# (legend name, index, height in y units), drawn in this order: each bar over the previous ones.
BARS = (("input", BLUE, 1.0), ("target", RED, 0.5), ("prediction", GREEN, 0.3))


def _font(size: int | None = None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one bitmap font, no sizes
        return ImageFont.load_default()


def _nice_ceil(v: float) -> float:
    """The first round number (1, 1.2, 1.5, 2, ... x 10^k) a little above v > 0: the loss axis' top."""
    e = 10.0 ** math.floor(math.log10(v))
    return next(m * e for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12) if m * e >= v * 1.02)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e7 else f"{v:.3g}"


class EchoFigureDrawer:
    """The figure as an RGB uint8 array [height, width, 3] (`draw`) or PNG (`draw_png`).

    Keeps the static picture of the last (streams, T) and redraws only the data into a copy of it. After a
    draw, `boxes[i]` = (top, bottom, left, right), end-exclusive, is the inside of panel i's frame: the loss
    panel, then stream 0, 1, ... (empty where the figure is too small for the panel).
    """

    def __init__(self, width: int = 800, height: int = 450):
        self.width, self.height = max(1, int(width)), max(1, int(height))
        self.font = _font(max(8, round(min(self.width / 26, self.height / 18))))
        self.th = self.font.getbbox("Ag")[3]  # a text line's height
        self._key: tuple[int, int] | None = None
        self.boxes: list[tuple[int, int, int, int]] = []

    def _text(self, d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, align: str = "l") -> None:
        """Text whose left ("l") or right ("r") end is at x, its ink vertically centred on y."""
        _, top, _, bottom = self.font.getbbox("0")
        x = xy[0] - (self.font.getlength(text) if align == "r" else 0)
        d.text((round(x), round(xy[1] - (top + bottom) / 2)), text, fill=INK, font=self.font)

    def _build(self, streams: int, T: int) -> None:
        W, H, th = self.width, self.height, self.th
        self._title_h = min(th + th // 2, H // 5)
        ch = max(0, (H - self._title_h - 2) // (1 + streams))  # one column: the loss panel, then each stream
        self._labels = W >= 8 * th and ch >= 3 * th  # room for labels, else bare frames
        ml, mr = (round(self.font.getlength("0.00")) + th // 2, th // 2) if self._labels else (2, 2)
        im = Image.new("L", (W, H), WHITE)
        d = ImageDraw.Draw(im)
        self.boxes = []
        for i in range(1 + streams):
            cy = self._title_h + i * ch
            mb = th + th // 4 if i == 0 and self._labels else 2  # the loss panel: its steps below it
            x0, y0, x1, y1 = ml, cy + 1, max(ml, W - mr), max(cy + 1, cy + ch - mb)  # the frame
            self.boxes.append((y0 + 1, max(y0 + 1, y1 - 1), x0 + 1, max(x0 + 1, x1 - 1)))
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            d.rectangle((x0, y0, x1 - 1, y1 - 1), outline=INK)
            # In the frame's top corner: the curve falls from the left, bars fill the lower half.
            if self._labels and i == 0:
                self._text(d, (x1 - th // 2, y0 + th * 0.6), "train/loss", "r")
            elif self._labels:
                self._text(d, (x0 + th // 3, y0 + th * 0.6), f"stream {i - 1}")
        box, gap = th // 2, th // 4
        widths = [box + gap + round(self.font.getlength(name)) + th // 2 for name, _, _ in BARS]
        if self._labels and self._title_h > th and W - sum(widths) >= 9 * th:  # the legend, right of the title
            x, mid = W - 2 - sum(widths) + th // 2, self._title_h // 2
            for (name, index, _), w in zip(BARS, widths, strict=True):
                d.rectangle((x, mid - box // 2, x + box, mid + box // 2), fill=index)
                self._text(d, (x + box + gap, mid), name)
                x += w
        self._background = np.asarray(im).copy()
        # Bars: the lower half of a frame (y 0..1 of 0..2); one row of bars per stream, mapped to the columns.
        top, bottom, left, right = self.boxes[-1]
        self._bar_h, self._col_t = (bottom - top) // 2, (np.arange(right - left) * T) // max(right - left, 1)
        self._key = (streams, T)

    def _draw_bars(self, img: np.ndarray, x: np.ndarray, y: np.ndarray, pred: np.ndarray) -> None:
        bh = self._bar_h
        if bh < 1 or len(self._col_t) == 0 or x.size == 0:
            return
        rows = np.arange(bh, 0, -1)[None, :, None]  # a pixel row's height above the frame's bottom
        bars = np.full((x.shape[0], bh, x.shape[1]), WHITE, dtype=np.uint8)  # [stream, row, time step]
        for values, (_, index, height) in zip((x, y, pred), BARS, strict=True):
            v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
            px = np.where(v > 0, np.maximum(1, np.rint(v * height * bh)), 0)  # a nonzero bar stays visible
            bars[rows <= px[:, None, :]] = index
        for s in range(x.shape[0]):
            top, bottom, left, right = self.boxes[1 + s]
            img[bottom - bh:bottom, left:right] = bars[s][:, self._col_t]

    def _draw_loss(self, d: ImageDraw.ImageDraw, steps: np.ndarray, losses: np.ndarray) -> None:
        s, loss = steps.astype(np.float64), losses.astype(np.float64)
        finite = np.isfinite(s) & np.isfinite(loss)
        order = np.argsort(s[finite], kind="stable")
        s, loss = s[finite][order], loss[finite][order]
        top, bottom, left, right = self.boxes[0]
        if not len(s) or right - left < 2 or bottom - top < 2:
            return
        lo, hi = min(0.0, loss.min()), max(0.0, loss.max())
        hi = _nice_ceil(hi) if hi > 0 else hi
        hi = hi if hi > lo else lo + 1.0  # a curve of zeros
        px = left + np.rint((s - s[0]) / ((s[-1] - s[0]) or 1.0) * (right - 1 - left))
        py = np.rint(bottom - 1 - (loss - lo) / (hi - lo) * (bottom - 1 - top))
        # At most 2 points a pixel column (its min and max: spikes stay visible), whatever the curve's length.
        starts = np.flatnonzero(np.diff(px, prepend=-1))
        ys = np.column_stack((np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts))).ravel()
        points = np.column_stack((np.repeat(px[starts], 2), ys)).astype(np.int64)
        th = self.th
        d.line(points.ravel().tolist(), fill=LOSS, width=max(1, round(th / 10)))  # ~1.5 px on TensorBoard's card
        if self._labels:
            cy = self._title_h  # the loss panel's cell starts below the title
            for v in (lo, hi):
                r = bottom - round((v - lo) / (hi - lo) * (bottom - top + 1))
                d.line((left - 1 - th // 4, r, left - 2, r), fill=INK)
                self._text(d, (left - 1 - th // 3, min(max(r, cy + th / 2), bottom - th / 2)), f"{v:.3g}", "r")
            self._text(d, (left - 1, bottom + 1 + th * 0.6), _fmt(s[0]))
            self._text(d, (right, bottom + 1 + th * 0.6), _fmt(s[-1]), "r")

    def _image(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
               title: str) -> Image.Image:
        x, y, pred = (np.atleast_2d(np.asarray(a)) for a in (x, y, pred))
        if x.ndim != 2 or not x.shape == y.shape == pred.shape:
            raise ValueError(f"x, y, pred must be [streams, T] of one shape, got {x.shape}, {y.shape}, {pred.shape}")
        if self._key != x.shape:
            self._build(*x.shape)
        img = self._background.copy()
        self._draw_bars(img, x, y, pred)
        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        self._draw_loss(d, np.ravel(steps), np.ravel(losses))
        if title and self._title_h > self.th:  # left, the legend right; none where a line does not fit
            self._text(d, (2, self._title_h / 2), title)
        im.putpalette(PALETTE.tobytes())
        return im

    def draw(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
             title: str = "") -> np.ndarray:
        """The figure as an RGB uint8 array [height, width, 3]. x, y, pred: [streams, T] arrays of 0/1 (any
        int or float dtype); steps, losses: 1-D arrays of the loss curve so far (may be empty; non-finite
        values are skipped)."""
        return np.array(self._image(x, y, pred, steps, losses, title).convert("RGB"))

    def draw_png(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                 title: str = "") -> tuple[bytes, int, int]:
        """The figure as (PNG bytes, height, width), what a TensorBoard image summary holds."""
        out = io.BytesIO()
        # A "P" image: no row filters, and flat colours deflate well.
        self._image(x, y, pred, steps, losses, title).save(out, format="PNG", compress_level=1)
        return out.getvalue(), self.height, self.width
