"""The sweep's picture, `summary.png`: the optimized metric and the steps to learn the echo vs the swept values.

One swept key: two line/point panels; two or more: two heatmaps over the first two keys. Jobs that share a
cell (a seed sweep, or keys beyond the second) are aggregated: the best metric, the fewest steps. Imports
only the standard library at import time, matplotlib (object API, Agg canvas, no pyplot) when drawing: the
sweep callback imports it in every job.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

INF = math.inf


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    """The value as a float if finite, else None (missing, NaN, inf, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _steps(value: Any) -> float:
    """Steps to echo: a finite number, or inf for a job that never learned (inf, NaN or not logged)."""
    number = _finite(value)
    return INF if number is None else number


def _order(values: list[str]) -> tuple[list[str], bool]:
    """The distinct values, sorted by number if all are numbers (then True), else in the order first seen."""
    distinct = list(dict.fromkeys(values))
    numeric = all(_number(v) is not None for v in distinct)
    return (sorted(distinct, key=float) if numeric else distinct), numeric


def _aggregate(jobs: list[dict], keys: list[str], metric: str, steps_metric: str, maximize: bool) -> dict:
    """{values tuple: {"metric": best or None, "steps": fewest (inf: never) or None, "jobs": n, "failed": n}}."""
    cells: dict[tuple[str, ...], dict[str, Any]] = {}
    for job in jobs:
        key = tuple(str(job.get("values", {}).get(k, "")) for k in keys)
        cell = cells.setdefault(key, {"metric": None, "steps": None, "jobs": 0, "failed": 0})
        cell["jobs"] += 1
        if job.get("status") != "completed":
            cell["failed"] += 1
            continue
        metrics = job.get("metrics") or {}
        value = _finite(metrics.get(metric))
        if value is not None and (cell["metric"] is None or (value > cell["metric"]) == maximize):
            cell["metric"] = value
        steps = _steps(metrics.get(steps_metric))
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

    maximize = not direction.lower().startswith("min")
    keys = list(swept[:2])
    cells = _aggregate(jobs, keys, metric, steps_metric, maximize)
    fig = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    notes = [f"{len(jobs)} jobs"]
    failed = sum(1 for j in jobs if j.get("status") != "completed")
    if failed:
        notes.append(f"{failed} failed")
    if len(swept) > 2:
        notes.append(f"best over {', '.join(swept[2:])}")
    elif any(c["jobs"] > 1 for c in cells.values()):
        notes.append("best of duplicates")
    better = "higher" if maximize else "lower"
    labels = (f"{metric} ({better} is better)", f"{steps_metric} (fewer is better)")
    if len(keys) == 1:
        _lines(axes, keys[0], cells, labels)
    else:
        _heatmaps(fig, axes, keys, cells, labels, maximize)
    head = f"{title}: " if title else ""
    text = f"{head}{metric} and {steps_metric} vs {' × '.join(keys)}"
    notes_text = f"({'; '.join(notes)})"
    fig.suptitle(text + ("\n" if len(text) + len(notes_text) > 110 else " ") + notes_text, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # readers never see half a PNG
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _lines(axes: Any, key: str, cells: dict, labels: tuple[str, str]) -> None:
    """Metric (left) and steps (right) vs one key; never-learned at the top, failed-only at the bottom."""
    import numpy as np

    order, numeric = _order([k[0] for k in cells])
    xs = np.array([float(v) for v in order]) if numeric else np.arange(len(order), dtype=float)
    log = numeric and xs.min() > 0 and xs.max() / xs.min() >= 100
    top, bottom = (0.96, 0.04)  # in axes coordinates: beyond the data, whatever its range
    for ax, name, label, color in zip(axes, ("metric", "steps"), labels, ("tab:blue", "tab:orange"), strict=True):
        ys = np.array([np.nan if cells[(v,)][name] in (None, INF) else cells[(v,)][name] for v in order])
        ax.plot(xs, ys, marker="o", color=color, linestyle="-" if numeric else "none")  # NaN breaks the line
        edge = ax.get_xaxis_transform()  # x in data, y in axes coordinates
        never = [x for x, v in zip(xs, order, strict=True) if name == "steps" and cells[(v,)]["steps"] == INF]
        # No value: every job failed, or the metric was not logged or NaN (a diverged run).
        lost = [(x, "failed" if cells[(v,)]["jobs"] == cells[(v,)]["failed"] else "n/a")
                for x, v in zip(xs, order, strict=True) if cells[(v,)][name] is None]
        # Labelled at each marker (not a legend): the y axis must not be read at these points.
        edges = [(x, top, "tab:red", "never", -11) for x in never] + [(x, bottom, "grey", w, 11) for x, w in lost]
        for x, y, color, word, dy in edges:
            ax.scatter([x], [y], transform=edge, marker="x", s=70, color=color, clip_on=False)
            ax.annotate(word, (x, y), xycoords=edge, xytext=(0, dy), textcoords="offset points", fontsize=9,
                        color=color, va="center", ha="center")
        if np.isnan(ys).all():
            ax.set_yticks([])
        if log:
            ax.set_xscale("log")
        # Limits by hand: autoscaling ignores the edge markers (axes coordinates) and NaN points.
        ax.margins(y=0.15)  # room above and below the data for the edge markers
        if numeric:
            ax.set_xticks(xs, [_fmt(x) for x in xs])
            ax.minorticks_off()
            lo, hi = xs.min(), xs.max()
            if log:
                pad = (hi / lo) ** 0.06
                ax.set_xlim(lo / pad, hi * pad)
            else:
                pad = 0.06 * (hi - lo or 1.0)
                ax.set_xlim(lo - pad, hi + pad)
        else:
            ax.set_xticks(xs, order)
            ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel(key, fontsize=10)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)


def _heatmaps(fig: Any, axes: Any, keys: list[str], cells: dict, labels: tuple[str, str], maximize: bool) -> None:
    """Metric and steps as heatmaps (rows: first key, columns: second); the better end is yellow in both."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    rows, _ = _order([k[0] for k in cells])
    cols, _ = _order([k[1] for k in cells])
    size = max(6.0, min(10.0, 80 / max(len(rows), len(cols))))
    for ax, name, label, high_good in zip(axes, ("metric", "steps"), labels, (maximize, False), strict=True):
        grid = np.full((len(rows), len(cols)), np.nan)
        text = [["" for _ in cols] for _ in rows]
        never = np.zeros(grid.shape, dtype=bool)
        for (r, c), cell in cells.items():
            i, j, value = rows.index(r), cols.index(c), cell[name]
            if value == INF:
                never[i, j], text[i][j] = True, "never"
            elif value is not None:
                grid[i, j], text[i][j] = value, str(round(value)) if name == "steps" else _fmt(value)
            elif cell["jobs"] == cell["failed"]:
                text[i][j] = "failed"
        cmap = "viridis" if high_good else "viridis_r"
        ax.set_facecolor("#eeeeee")  # failed or no job: the masked cells show the background
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        ax.imshow(np.ma.masked_where(~never, never), cmap=ListedColormap(["#b0b0b0"]), aspect="auto")
        if not np.isnan(grid).all():
            fig.colorbar(image, ax=ax, fraction=0.08, pad=0.02).ax.tick_params(labelsize=8)
        for i in range(len(rows)):
            for j in range(len(cols)):
                shade = image.cmap(image.norm(grid[i, j])) if not np.isnan(grid[i, j]) else (1, 1, 1, 1)
                dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5  # luminance: white text on dark
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=size, color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(keys[1], fontsize=10)
        ax.set_ylabel(keys[0], fontsize=10)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=9, length=0)
