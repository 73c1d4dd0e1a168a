"""Evaluation reports: CSV + Markdown tables (per image and mean) and PNG plots (matplotlib Agg).

Rows are plain dicts (column -> value); the first column is normally ``image``. Every file is written
atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`histosam.io.atomic.atomic_write`), creating folders."""
    from histosam.io.atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _columns(rows: Sequence[Mapping]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def mean_row(rows: Sequence[Mapping], label: str = "mean", key: str = "image") -> dict:
    """Arithmetic mean of every numeric column (NaN ignored); ``key`` column set to ``label``."""
    out: dict = {key: label}
    for c in _columns(rows):
        if c == key:
            continue
        vals = [r.get(c) for r in rows]
        nums = [float(v) for v in vals if isinstance(v, int | float | np.number) and not isinstance(v, bool)]
        nums = [v for v in nums if not math.isnan(v)]
        if nums:
            out[c] = float(np.mean(nums))
    return out


def _fmt(v, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def to_csv(rows: Sequence[Mapping]) -> str:
    """CSV text (full float precision) of ``rows``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def to_markdown(rows: Sequence[Mapping], digits: int = 4) -> str:
    """GitHub Markdown table of ``rows`` (floats rounded to ``digits``)."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping], out_dir: str | Path, name: str, with_mean: bool = True,
                 md_columns: Sequence[str] | None = None) -> dict:
    """Write ``<name>.csv`` (per-image rows + mean row) and return ``{"csv": path, "mean": row, "md": text}``.

    The Markdown text (per-image table, restricted to ``md_columns`` if given) is returned for
    embedding in a report; the CSV always has every column.
    """
    rows = list(rows)
    full = rows + ([mean_row(rows)] if with_mean and rows else [])
    path = atomic_write_text(Path(out_dir) / f"{name}.csv", to_csv(full))
    shown = full if md_columns is None else [{c: r.get(c) for c in md_columns if c in r} for r in full]
    return {"csv": path, "mean": full[-1] if with_mean and rows else {}, "md": to_markdown(shown)}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_threshold_curves(curves: Mapping[str, Sequence[float]], path: str | Path,
                          thresholds=None, ylabel: str = "segmentation accuracy") -> Path:
    """Score per IoU threshold, one line per entry of ``curves`` (default thresholds 0.50..0.95)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in curves.items():
        xs = thresholds if thresholds is not None else np.arange(0.5, 1.0, 0.05)[: len(ys)]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_click_curves(curves: Mapping[str, Sequence[float]], path: str | Path,
                      xlabel: str = "number of clicks", ylabel: str = "mean IoU", start: int = 1) -> Path:
    """Score vs number of clicks (or iterations), x = ``start, start+1, ...``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in curves.items():
        ax.plot(np.arange(start, start + len(ys)), ys, marker=".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
