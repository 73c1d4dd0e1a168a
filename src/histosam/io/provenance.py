"""Provenance records: what produced an output (histosam version, model and its sha256, all parameters,
input, timestamps, platform), written as JSON next to the results."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histosam.io.atomic import atomic_write

__all__ = ["sha256_file", "now_iso", "build_provenance", "write_provenance", "read_provenance"]


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds (e.g. ``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("histosam")
    except Exception:
        return "unknown"


def build_provenance(
    *,
    model_name: str | None = None,
    model_sha256: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    input_path: str | os.PathLike | None = None,
    started: str | None = None,
    finished: str | None = None,
    outputs: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance dict; ``started``/``finished`` default to now. Values must be JSON-serialisable."""
    import numpy
    import torch

    return {
        "histosam_version": _version(),
        "model": {"name": model_name, "sha256": model_sha256},
        "parameters": dict(parameters or {}),
        "input": None if input_path is None else str(Path(input_path).resolve()),
        "outputs": dict(outputs or {}),
        "started": started or now_iso(),
        "finished": finished or now_iso(),
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
        },
        **dict(extra or {}),
    }


def write_provenance(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write a provenance dict as indented JSON (atomic)."""
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return Path(path)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
