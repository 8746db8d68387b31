"""The tutorial's echo figure, drawn with numpy and Pillow: cheap enough to draw inline while training.

What it shows (as in the 2016 tutorial): a title line, the training loss so far, and per stream the current
chunk of T time steps as bars on a 0..2 axis: input (blue, height 1), target (red, 0.5) over it, prediction
(green, 0.3) on top. A learned echo shows red and green bars that coincide.

Made to be read where TensorBoard shows it: ~350 x 200 px (its Images tab and Time Series cards), 0.44 of the
default 800 x 450. So one column of full-width panels (the loss, then each stream), few labels, and a font
that grows with the figure (1/18 of its height: 11 px on the card).

Why not matplotlib: its figure costs ~40 ms, too much for the training process, and a process pool to hide
it breaks under some launchers. Here the static layout (frames, labels, legend) is drawn once per shape and
each figure copies it and writes only the data: the bars with numpy, the loss polyline and a few labels with
PIL. 1-2 ms a figure (800x450, PNG included), so a callback can draw it inline every N chunks, under any
launcher. Imports only numpy and PIL: never torch, Lightning or matplotlib.

The picture is palette indices (1 byte a pixel; a "P" PNG). Indices 5..255 are the greys of their level, so
PIL draws antialiased text straight into it in mode "L": a blend of white (255) and the ink (20) stays a grey.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLUE, RED, GREEN, LOSS, INK, WHITE = 1, 2, 3, 4, 20, 255  # palette indices
PALETTE = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
PALETTE[[BLUE, RED, GREEN, LOSS]] = [(0, 0, 255), (255, 0, 0), (0, 160, 0), (31, 119, 180)]
# (legend name, index, height in y units), drawn in this order: each bar over the previous ones.
BARS = (("input", BLUE, 1.0), ("target", RED, 0.5), ("prediction", GREEN, 0.3))


def _font(size: int | None = None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size) if size else ImageFont.load_default()
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
        self._key: tuple[int, int] | None = None
        self.cells: list[tuple[int, int, int, int]] = []  # per panel: (left, top, width, height) of its cell
        self.boxes: list[tuple[int, int, int, int]] = []

    def _text(self, d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, align: str = "l") -> None:
        """Text whose left ("l"), centre ("c") or right ("r") end is at x, its ink vertically centred on y."""
        w, (_, top, _, bottom) = self.font.getlength(text), self.font.getbbox("0")
        x = xy[0] - {"l": 0, "c": w / 2, "r": w}[align]
        d.text((round(x), round(xy[1] - (top + bottom) / 2)), text, fill=INK, font=self.font)

    def _build(self, streams: int, T: int) -> None:
        W, H = self.width, self.height
        th = self.font.getbbox("Ag")[3]  # a text line's height
        self._title_h = min(th + th // 2, H // 5)
        ch = max(0, (H - self._title_h - 2) // (1 + streams))  # one column: the loss panel, then each stream
        self._labels = W >= 8 * th and ch >= 3 * th  # room for labels, else bare frames
        ml, mr = (round(self.font.getlength("0.00")) + th // 2, th // 2) if self._labels else (2, 2)
        im = Image.new("L", (W, H), WHITE)
        d = ImageDraw.Draw(im)
        self.cells, self.boxes = [], []
        for i in range(1 + streams):
            cy = self._title_h + i * ch
            mb = th + th // 4 if i == 0 and self._labels else 2  # the loss panel: its steps below it
            x0, y0, x1, y1 = ml, cy + 1, max(ml, W - mr), max(cy + 1, cy + ch - mb)  # the frame
            self.cells.append((0, cy, W, ch))
            self.boxes.append((y0 + 1, max(y0 + 1, y1 - 1), x0 + 1, max(x0 + 1, x1 - 1)))
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            d.rectangle((x0, y0, x1 - 1, y1 - 1), outline=INK)
            if self._labels:  # in the frame's top corner: the curve falls from the left, bars fill the lower half
                self._text(d, (x1 - th // 2, y0 + th * 0.6), "train/loss", "r") if i == 0 else \
                    self._text(d, (x0 + th // 3, y0 + th * 0.6), f"stream {i - 1}")
        self._legend_x = W
        box, gap = th // 2, th // 4
        widths = [box + gap + round(self.font.getlength(name)) + th // 2 for name, _, _ in BARS]
        if self._labels and self._title_h > th and W - sum(widths) >= 9 * th:  # the legend, right of the title
            self._legend_x = x = W - 2 - sum(widths) + th // 2
            mid = self._title_h // 2
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

    def _draw_loss(self, img: np.ndarray, steps: np.ndarray, losses: np.ndarray) -> None:
        n = min(len(steps), len(losses))
        s, loss = steps[:n].astype(np.float64), losses[:n].astype(np.float64)
        finite = np.isfinite(s) & np.isfinite(loss)
        s, loss = s[finite], loss[finite]
        top, bottom, left, right = self.boxes[0]
        if not len(s) or right - left < 2 or bottom - top < 2:
            return
        if (np.diff(s) < 0).any():
            order = np.argsort(s, kind="stable")
            s, loss = s[order], loss[order]
        lo, hi = min(0.0, loss.min()), max(0.0, loss.max())
        hi = _nice_ceil(hi) if hi > 0 else hi
        hi = hi if hi > lo else lo + 1.0  # a curve of zeros
        px = left + np.rint((s - s[0]) / ((s[-1] - s[0]) or 1.0) * (right - 1 - left)).astype(np.int64)
        py = bottom - 1 - (loss - lo) / (hi - lo) * (bottom - 1 - top)
        # At most 2 points a pixel column (its min and max: spikes stay visible), whatever the curve's length.
        starts = np.flatnonzero(np.diff(px, prepend=-1))
        xs, ys = np.repeat(px[starts], 2), np.empty(2 * len(starts))
        ys[0::2], ys[1::2] = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
        cx, cy, cw, ch = self.cells[0]
        im = Image.fromarray(img[cy:cy + ch, cx:cx + cw])
        d = ImageDraw.Draw(im)
        d.line(np.column_stack((xs - cx, np.rint(ys) - cy)).astype(np.int64).ravel().tolist(), fill=LOSS,
               width=max(1, round(self.font.getbbox("Ag")[3] / 10)))  # ~1.5 px on TensorBoard's card
        if self._labels:
            x0, y1, th = left - 1 - cx, bottom - cy, self.font.getbbox("Ag")[3]
            for v in (lo, hi):
                r = y1 - round((v - lo) / (hi - lo) * (bottom - top + 1))
                d.line((x0 - th // 4, r, x0 - 1, r), fill=INK)
                self._text(d, (x0 - th // 3, min(max(r, th / 2), y1 - th / 2)), f"{v:.3g}", "r")
            label_y = y1 + 1 + th * 0.6
            self._text(d, (x0, label_y), _fmt(s[0]))
            self._text(d, (right - cx, label_y), _fmt(s[-1]), "r")
        img[cy:cy + ch, cx:cx + cw] = np.asarray(im)

    def _draw_title(self, img: np.ndarray, title: str) -> None:
        if not title or self._title_h < 4:
            return
        im = Image.fromarray(img[:self._title_h])
        self._text(ImageDraw.Draw(im), (2, self._title_h / 2), title)  # left, the legend right
        img[:self._title_h] = np.asarray(im)

    def draw_indices(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray,
                     losses: np.ndarray, title: str = "") -> np.ndarray:
        """The figure as palette indices [height, width] uint8 (colours: `PALETTE`)."""
        x, y, pred = (np.atleast_2d(np.asarray(a)) for a in (x, y, pred))
        if x.ndim != 2 or not x.shape == y.shape == pred.shape:
            raise ValueError(f"x, y, pred must be [streams, T] of one shape, got {x.shape}, {y.shape}, {pred.shape}")
        if self._key != x.shape:
            self._build(*x.shape)
        img = self._background.copy()
        self._draw_bars(img, x, y, pred)
        self._draw_loss(img, np.ravel(steps), np.ravel(losses))
        self._draw_title(img, title)
        return img

    def _image(self, *args, **kwargs) -> Image.Image:
        im = Image.fromarray(self.draw_indices(*args, **kwargs))
        im.putpalette(PALETTE.tobytes())
        return im

    def draw(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
             title: str = "") -> np.ndarray:
        """The figure as an RGB uint8 array [height, width, 3]."""
        return np.array(self._image(x, y, pred, steps, losses, title).convert("RGB"))

    def draw_png(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                 title: str = "") -> tuple[bytes, int, int]:
        """The figure as (PNG bytes, height, width), what a TensorBoard image summary holds: a palette PNG of
        the same pixels as `draw`, about half the cost of `encode_png(draw(...))`."""
        return _png(self._image(x, y, pred, steps, losses, title)), self.height, self.width


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=1)  # a "P" image: no row filters, and flat colours deflate well
    return out.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array [height, width, 3].

    Written here (zlib level 1, no row filter) rather than by Pillow: Pillow picks a filter per row of an RGB
    image by trying all five, 2/3 of its time (~5 ms for 900x500) for little gain on flat colours; ~3x faster.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [height, width, 3], got shape {image.shape}")
    h, w, _ = image.shape
    rows = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: its filter type (0: none), then its pixels
    rows[:, 1:] = image.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits a channel, RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + _chunk(b"IEND", b""))


def draw_echo_figure(x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                     width: int = 800, height: int = 450, title: str = "") -> np.ndarray:
    """One figure as an RGB uint8 array [height, width, 3]. x, y, pred: [streams, T] arrays of 0/1 (any int
    or float dtype); steps, losses: 1-D arrays (may be empty; non-finite values are skipped) of the loss curve
    so far. To draw many, keep an `EchoFigureDrawer`: it reuses the static layout."""
    return EchoFigureDrawer(width, height).draw(x, y, pred, steps, losses, title)
