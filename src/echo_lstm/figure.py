"""The tutorial's figure, drawn with matplotlib and encoded as PNG: light enough for a worker process.

Imports only numpy at import time, and matplotlib (object API, Agg canvas, no pyplot) and PIL (matplotlib's
own dependency) when a figure is first drawn: never torch or Lightning. `EchoFigure` (research.py) renders in
a spawned worker process that imports this module, so that the worker starts in a fraction of a second
and its drawing never holds the training process's GIL. The worker's entry points are the module-level
functions `init_worker`, `warm_up` and `render_png`.
"""

from __future__ import annotations

import io
import math
import os
import signal
import threading
import time

import numpy as np


class EchoFigureDrawer:
    """The tutorial's figure, drawn into an RGB uint8 array [height, width, 3].

    First panel: the training loss so far. Then, per stream, the chunk's time steps as bars: input (blue,
    height 1), target (red, 0.5), prediction (green, 0.3); a learned echo shows red and green bars that
    coincide. Matplotlib's object API with the Agg canvas (no pyplot: no global state, safe in a thread).

    The figure is built once and only its data change afterwards. Most of a full draw is spent on the
    axes' ticks and labels, which never change for the stream panels: so the first draw keeps a picture
    of everything static (the stream panels without their bars, the legend), and each figure restores it
    and draws only what changes on top (blitting): the bars and the panel frames over them, the loss panel
    (whose limits and ticks follow the curve) and the title. About 4x faster than a full draw, and the
    same picture.
    """

    COLORS = (("input", "blue", 1.0), ("target", "red", 0.5), ("prediction", "green", 0.3))

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._key: tuple[int, int] | None = None

    def _build(self, streams: int, T: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        dpi = 100
        self.fig = Figure(figsize=(self.width / dpi, self.height / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        cols = 3
        rows = math.ceil((1 + streams) / cols)
        self.fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.88, wspace=0.25, hspace=0.45)
        ax = self.fig.add_subplot(rows, cols, 1)
        (self.loss_line,) = ax.plot([], [], color="tab:blue", linewidth=1)
        ax.set_title("train/loss", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.patch.set_visible(False)  # the figure's white shows through: the same picture, and redrawn over
        self.loss_ax = ax            # the static one, this panel hides nothing of the others
        edges = np.arange(T + 1) - 0.5
        zeros = np.zeros(T)
        self.bars = []
        for s in range(streams):
            ax = self.fig.add_subplot(rows, cols, s + 2)
            self.bars.append([ax.stairs(zeros, edges, fill=True, color=c, label=name)
                              for name, c, _ in self.COLORS])
            ax.set_xlim(-0.5, T - 0.5)
            ax.set_ylim(0, 2)
            ax.set_title(f"stream {s}", fontsize=8)
            ax.tick_params(labelsize=6)
        self.legend = self.fig.axes[1].legend(fontsize=6, loc="upper right", ncols=3, frameon=False)
        self.title = self.fig.suptitle("", fontsize=9)
        # What changes is "animated": left out of the full draw, drawn over the static picture in draw().
        # So is what a full draw puts over it: the stream panels' frames and the legend (which may reach
        # into the loss panel).
        frames = [spine for bars in self.bars for spine in bars[0].axes.spines.values()]
        for artist in (self.loss_ax, self.title, self.legend, *(bar for bars in self.bars for bar in bars),
                       *frames):
            artist.set_animated(True)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._key = (streams, T)

    def draw(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
             title: str = "") -> np.ndarray:
        streams, T = x.shape
        if self._key != (streams, T):
            self._build(streams, T)
        for s, bars in enumerate(self.bars):
            for bar, values, (_, _, height) in zip(bars, (x[s], y[s], pred[s]), self.COLORS, strict=True):
                bar.set_data(values.astype(float) * height)
        self.loss_line.set_data(steps, losses)
        if len(steps):
            self.loss_ax.relim()
            self.loss_ax.autoscale_view()
        self.title.set_text(title)
        self.canvas.restore_region(self.background)  # then in the order of a full draw:
        self.fig.draw_artist(self.loss_ax)
        for bars in self.bars:
            ax = bars[0].axes
            for artist in (*bars, *ax.spines.values(), *([self.legend] if self.legend.axes is ax else [])):
                ax.draw_artist(artist)
        self.fig.draw_artist(self.title)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def draw_png(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                 title: str = "") -> tuple[bytes, int, int]:
        """The figure as (PNG bytes, height, width): what a TensorBoard image summary holds."""
        image = self.draw(x, y, pred, steps, losses, title)
        return encode_png(image), image.shape[0], image.shape[1]


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 array [height, width, 3] as PNG bytes (PIL, as TensorBoard's `add_image` encodes)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def draw_echo_figure(x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
                     width: int, height: int, title: str = "") -> np.ndarray:
    """One figure (see EchoFigureDrawer) as an RGB uint8 array [height, width, 3]."""
    return EchoFigureDrawer(width, height).draw(x, y, pred, steps, losses, title)


# ---------------------------------------------------------------------------------------------- worker process
_drawer: EchoFigureDrawer | None = None  # one per process: the worker's figure, built once, redrawn after


def render_png(x: np.ndarray, y: np.ndarray, pred: np.ndarray, steps: np.ndarray, losses: np.ndarray,
               width: int, height: int, title: str = "") -> tuple[bytes, int, int]:
    """Draw and encode one figure with this process's cached drawer: (PNG bytes, height, width)."""
    global _drawer
    if _drawer is None or (_drawer.width, _drawer.height) != (width, height):
        _drawer = EchoFigureDrawer(width, height)
    return _drawer.draw_png(x, y, pred, steps, losses, title)


def warm_up(width: int = 0, height: int = 0, streams: int = 0, T: int = 0) -> int:
    """Import what drawing needs (matplotlib, PIL) and, given the figure's size and shape, build this
    process's drawer (its static picture), so that the first figure costs no more than the next ones."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import PIL.Image  # noqa: F401

    if width > 0 and height > 0 and streams > 0 and T > 0:
        zeros = np.zeros((streams, T), dtype=np.int64)
        render_png(zeros, zeros, zeros, np.zeros(0), np.zeros(0), width, height)
    return os.getpid()


def init_worker(parent_pid: int, niceness: int = 19) -> None:
    """Set up a worker process. Lowest CPU priority (nice 19): it uses the CPU time that nothing else wants,
    so on a busy machine a figure takes longer (and the next ones are skipped) rather than slowing training.
    Deaf to Ctrl-C: a terminal's SIGINT reaches the whole process group, and the parent decides when the
    worker stops. Gone with its parent, should the parent be killed without shutting the worker down."""
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)
        except OSError:
            pass

    def watch_parent() -> None:  # a killed parent (SIGKILL, os._exit) cannot shut the pool down
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    if hasattr(os, "getppid"):
        threading.Thread(target=watch_parent, name="echo-figure-watch-parent", daemon=True).start()
