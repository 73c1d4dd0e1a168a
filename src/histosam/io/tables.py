"""Per-object measurement tables: CSV/TSV (pandas) and Parquet (pyarrow), chosen by suffix, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from histosam.errors import HistosamError
from histosam.io.atomic import atomic_path, atomic_write

__all__ = ["write_table", "read_table", "TABLE_SUFFIXES"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise HistosamError(f"table format of {path.name!r} unknown; use one of {', '.join(TABLE_SUFFIXES)}")
    return suffix


def write_table(path: str | os.PathLike, table: pd.DataFrame | dict) -> Path:
    """Write a DataFrame (or dict of columns) to ``.csv``, ``.tsv`` or ``.parquet`` atomically."""
    path = Path(path)
    kind = _kind(path)
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    if kind == ".parquet":
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False, engine="pyarrow")
    else:
        with atomic_write(path, "w", newline="") as f:
            df.to_csv(f, index=False, sep="\t" if kind == ".tsv" else ",")
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    path = Path(path)
    kind = _kind(path)
    if not path.exists():
        raise HistosamError(f"table not found: {path}")
    if kind == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if kind == ".tsv" else ",")
