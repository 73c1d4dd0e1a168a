"""Regions of interest: a box ``x,y,w,h`` or polygons from a QuPath GeoJSON export.

All coordinates are **level-0 pixels (x, y)**, as QuPath writes them.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histosam.errors import RoiError


@dataclass
class Roi:
    """Bounding box ``(x, y, w, h)`` in level-0 pixels plus optional polygons (list of exterior
    rings, each ``(N, 2)`` float (x, y), holes in ``holes`` the same way)."""

    x: float
    y: float
    w: float
    h: float
    polygons: list[np.ndarray] = field(default_factory=list)
    holes: list[np.ndarray] = field(default_factory=list)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    def intersects_box(self, x: float, y: float, w: float, h: float, margin: float = 0.0) -> bool:
        """Whether the level-0 box ``(x, y, w, h)`` meets the ROI grown by ``margin`` level-0 px."""
        if x > self.x + self.w + margin or y > self.y + self.h + margin:
            return False
        if x + w < self.x - margin or y + h < self.y - margin:
            return False
        if not self.polygons:
            return True
        from shapely.geometry import Polygon, box
        from shapely.ops import unary_union

        cache = self.__dict__.setdefault("_grown", {})
        if margin not in cache:
            cache[margin] = unary_union([Polygon(r).buffer(margin) for r in self.polygons])
        return bool(cache[margin].intersects(box(x, y, x + w, y + h)))

    def mask(self, x0: float, y0: float, w: int, h: int, scale: float = 1.0) -> np.ndarray:
        """Boolean ``h x w`` mask on the grid whose pixel ``(j, i)`` is level-0 point
        ``(x0 + (j + .5) * scale, y0 + (i + .5) * scale)``; a box ROI is its rectangle."""
        from skimage.draw import polygon as draw_polygon

        def to_grid(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return (ring[:, 1] - y0) / scale - 0.5, (ring[:, 0] - x0) / scale - 0.5

        out = np.zeros((h, w), bool)
        if not self.polygons:
            ring = np.array(
                [[self.x, self.y], [self.x + self.w, self.y], [self.x + self.w, self.y + self.h],
                 [self.x, self.y + self.h]], float
            )
            rings, holes = [ring], []
        else:
            rings, holes = self.polygons, self.holes
        for ring, value in [(r, True) for r in rings] + [(r, False) for r in holes]:
            rr, cc = draw_polygon(*to_grid(ring), shape=(h, w))
            out[rr, cc] = value
        return out


def _rings(geometry: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    elif kind == "GeometryCollection":
        ext, hol = [], []
        for g in geometry.get("geometries", []):
            e, h = _rings(g)
            ext += e
            hol += h
        return ext, hol
    else:
        return [], []
    ext = [np.asarray(p[0], float)[:, :2] for p in polys if p]
    hol = [np.asarray(r, float)[:, :2] for p in polys for r in p[1:]]
    return ext, hol


def roi_from_geojson(path: str | os.PathLike) -> Roi:
    """Union of all (Multi)Polygon geometries in a GeoJSON file (FeatureCollection, Feature, list
    of Features as QuPath exports, or a bare geometry; ``.gz`` accepted)."""
    p = Path(path)
    try:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise RoiError(f"cannot read ROI GeoJSON {p}: {exc}") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") or {} for f in data.get("features", [])]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        geoms = [data.get("geometry") or {}]
    elif isinstance(data, list):
        geoms = [(f.get("geometry") or {}) if isinstance(f, dict) else {} for f in data]
    elif isinstance(data, dict):
        geoms = [data]
    else:
        geoms = []
    ext: list[np.ndarray] = []
    hol: list[np.ndarray] = []
    for g in geoms:
        e, h = _rings(g)
        ext += e
        hol += h
    if not ext:
        raise RoiError(f"no Polygon/MultiPolygon geometry in {p}")
    allpts = np.concatenate(ext)
    x0, y0 = allpts.min(axis=0)
    x1, y1 = allpts.max(axis=0)
    return Roi(float(x0), float(y0), float(x1 - x0), float(y1 - y0), ext, hol)


def parse_roi(spec: str | None) -> Roi | None:
    """``None`` -> ``None``; ``"x,y,w,h"`` -> box ROI; anything else is a GeoJSON file path."""
    if spec is None:
        return None
    parts = spec.split(",")
    if len(parts) == 4 and not Path(spec).exists():
        try:
            x, y, w, h = (float(v) for v in parts)
        except ValueError as exc:
            raise RoiError(f"ROI box must be x,y,w,h numbers, got {spec!r}") from exc
        if not all(map(math.isfinite, (x, y, w, h))):
            raise RoiError(f"ROI box must be finite numbers, got {spec!r}")
        if w <= 0 or h <= 0:
            raise RoiError(f"ROI box width and height must be > 0, got {spec!r}")
        return Roi(x, y, w, h)
    if not Path(spec).exists():
        raise RoiError(f"ROI {spec!r} is neither x,y,w,h nor an existing GeoJSON file")
    return roi_from_geojson(spec)
