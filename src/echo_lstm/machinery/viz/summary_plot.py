"""The sweep's picture, `summary.png`: the optimized metric and the steps to learn the echo vs the swept values.

One swept key: two line/point panels; two or more: two heatmaps over the first two keys. Jobs that share a
cell (a seed sweep, or keys beyond the second) are aggregated: the best metric, the fewest steps. Imports
matplotlib (object API, Agg canvas, no pyplot) only when drawing: the sweep callback imports this in every job.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

INF = math.inf


def _finite(value: Any) -> float | None:
    """The value as a float if finite, else None (missing, NaN, inf, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(values: list[str]) -> tuple[list[str], bool]:
    """The distinct values, sorted by number if all are numbers (then True), else in the order first seen."""
    distinct = list(dict.fromkeys(values))
    numeric = all(_finite(v) is not None for v in distinct)
    return (sorted(distinct, key=float) if numeric else distinct), numeric


def _aggregate(jobs: list[dict], keys: list[str], metric: str, steps_metric: str, maximize: bool) -> dict:
    """{values tuple: {"metric": best or None, "steps": fewest (inf: never) or None, "jobs": n, "failed": n}}."""
    cells: dict[tuple[str, ...], dict[str, Any]] = {}
    for job in jobs:
        cell = cells.setdefault(tuple(str(job.get("values", {}).get(k, "")) for k in keys),
                                {"metric": None, "steps": None, "jobs": 0, "failed": 0})
        cell["jobs"] += 1
        if job.get("status") != "completed":
            cell["failed"] += 1
            continue
        metrics = job.get("metrics") or {}
        value = _finite(metrics.get(metric))
        if value is not None and (cell["metric"] is None or (value > cell["metric"]) == maximize):
            cell["metric"] = value
        steps = _finite(metrics.get(steps_metric))
        steps = INF if steps is None else steps  # inf, NaN or not logged: never learned
        cell["steps"] = steps if cell["steps"] is None else min(cell["steps"], steps)
    return cells


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def plot_sweep_summary(jobs: list[dict], swept: list[str], metric: str, path: Path,
                       direction: str = "maximize", steps_metric: str = "train/steps_to_echo",
                       title: str = "") -> Path | None:
    """Write the sweep's PNG to `path` and return it; None (nothing written) when there is nothing to plot."""
    if not swept or not any(j.get("status") == "completed" and _finite((j.get("metrics") or {}).get(metric))
                            is not None for j in jobs):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from echo_lstm.machinery.rundir import write_file

    maximize = not direction.lower().startswith("min")
    keys = list(swept[:2])
    cells = _aggregate(jobs, keys, metric, steps_metric, maximize)
    fig = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    panels = [("metric", f"{metric} ({'higher' if maximize else 'lower'} is better)", maximize),
              ("steps", f"{steps_metric} (fewer is better)", False)]
    for ax, (name, label, high_good) in zip(fig.subplots(1, 2), panels, strict=True):
        if len(keys) == 1:
            _line(ax, name, cells)
        else:
            _heatmap(fig, ax, name, cells, high_good)
            ax.set_ylabel(keys[0], fontsize=10)
        ax.set_xlabel(keys[-1], fontsize=10)
        ax.set_title(label, fontsize=10)
    failed = sum(j.get("status") != "completed" for j in jobs)
    notes = [f"{len(jobs)} jobs", *([f"{failed} failed"] if failed else [])]
    if len(swept) > 2:
        notes.append(f"best over {', '.join(swept[2:])}")
    elif any(c["jobs"] > 1 for c in cells.values()):
        notes.append("best of duplicates")
    text = (f"{title}: " if title else "") + f"{metric} and {steps_metric} vs {' × '.join(keys)}"
    notes_text = f"({'; '.join(notes)})"
    fig.suptitle(text + ("\n" if len(text) + len(notes_text) > 110 else " ") + notes_text, fontsize=11)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_file(Path(path), png.getvalue())  # atomic: readers never see half a PNG
    return Path(path)


def _line(ax: Any, name: str, cells: dict) -> None:
    """The metric or the steps vs one key; never-learned at the top, failed-only at the bottom."""
    import numpy as np

    order, numeric = _order([k[0] for k in cells])
    xs = np.array([float(v) for v in order]) if numeric else np.arange(len(order), dtype=float)
    if numeric and xs.min() > 0 and xs.max() / xs.min() >= 100:
        xs = np.log10(xs)  # a log scale, with the values as the ticks' labels
    ys = np.array([np.nan if cells[(v,)][name] in (None, INF) else cells[(v,)][name] for v in order])
    ax.plot(xs, ys, marker="o", color="tab:blue" if name == "metric" else "tab:orange",
            linestyle="-" if numeric else "none")  # NaN breaks the line
    edge = ax.get_xaxis_transform()  # x in data, y in axes coordinates: beyond the data, whatever its range
    for x, v in zip(xs, order, strict=True):
        # Labelled at each marker (not a legend): the y axis must not be read at these points. No value: every job
        # failed, or the metric was not logged or NaN (a diverged run).
        cell = cells[(v,)]
        if cell[name] == INF:
            y, color, word, dy = 0.96, "tab:red", "never", -11
        elif cell[name] is None:
            y, color, word, dy = 0.04, "grey", "failed" if cell["jobs"] == cell["failed"] else "n/a", 11
        else:
            continue
        ax.scatter([x], [y], transform=edge, marker="x", s=70, color=color, clip_on=False)
        ax.annotate(word, (x, y), xycoords=edge, xytext=(0, dy), textcoords="offset points", fontsize=9,
                    color=color, va="center", ha="center")
    if np.isnan(ys).all():
        ax.set_yticks([])
    ax.margins(y=0.15)  # room above and below the data for the edge markers
    ax.set_xticks(xs, [_fmt(float(v)) for v in order] if numeric else order)
    pad = 0.06 * (np.ptp(xs) or 1.0) if numeric else 0.5
    ax.set_xlim(xs.min() - pad, xs.max() + pad)  # by hand: autoscaling ignores the edge markers and NaN points
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=9)


def _heatmap(fig: Any, ax: Any, name: str, cells: dict, high_good: bool) -> None:
    """The metric or the steps as a heatmap (rows: the first key, columns: the second); the better end yellow."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    rows, _ = _order([k[0] for k in cells])
    cols, _ = _order([k[1] for k in cells])
    grid = np.full((len(rows), len(cols)), np.nan)
    text = np.full(grid.shape, "", dtype=object)
    for (r, c), cell in cells.items():
        i, j, value = rows.index(r), cols.index(c), cell[name]
        if value == INF:
            text[i, j] = "never"
        elif value is not None:
            grid[i, j], text[i, j] = value, str(round(value)) if name == "steps" else _fmt(value)
        elif cell["jobs"] == cell["failed"]:
            text[i, j] = "failed"
    ax.set_facecolor("#eeeeee")  # failed or no job: the masked cells show the background
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis" if high_good else "viridis_r", aspect="auto")
    ax.imshow(np.ma.masked_where(text != "never", text == "never"), cmap=ListedColormap(["#b0b0b0"]), aspect="auto")
    if not np.isnan(grid).all():
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.02).ax.tick_params(labelsize=8)
    size = max(6.0, min(10.0, 80 / max(len(rows), len(cols))))
    for (i, j), value in np.ndenumerate(grid):
        shade = (1, 1, 1) if np.isnan(value) else image.cmap(image.norm(value))
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5  # luminance: white text on dark
        ax.text(j, i, text[i, j], ha="center", va="center", fontsize=size, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.tick_params(labelsize=9, length=0)
