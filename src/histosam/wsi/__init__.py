"""Whole-slide images: reading (``reader``), tissue masks (``tissue``), regions of interest (``roi``) and
the streaming, resumable slide pipeline (``pipeline``). Submodules import lazily."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SlideReader": "reader", "open_slide": "reader", "DEFAULT_MPP": "reader",
    "TissueMask": "tissue", "detect_tissue": "tissue",
    "Roi": "roi", "parse_roi": "roi",
    "segment_slide": "pipeline", "segment_cohort": "pipeline", "collect_slides": "pipeline",
    "ModelMaps": "pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"histosam.wsi.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'histosam.wsi' has no attribute {name!r}")


__all__ = sorted(_LAZY)
