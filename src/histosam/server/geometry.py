"""Masks and label images to GeoJSON geometries that trace pixel edges exactly.

Frame: image pixels of the viewport sent by the client, ``(x, y)``, pixel ``(row r, col c)`` covering
the square ``[c, c+1] × [r, r+1]``. This is QuPath's convention: the client then applies
``translate(region.minX, minY) · scale(downsample)`` itself, so the server never offsets.

Each object becomes the union of its pixel squares (built from horizontal runs, then merged by
GEOS), so the polygon area equals the pixel count and a point ``(c + 0.5, r + 0.5)`` lies inside
the geometry exactly when pixel ``(r, c)`` belongs to the object. Holes are kept; an object in
several pieces becomes a MultiPolygon. All geometries are valid (``shapely.is_valid``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of equal non-zero labels: ``(row, col_start, col_stop, label)`` int64 arrays."""
    h, w = labels.shape
    padded = np.zeros((h, w + 2), dtype=labels.dtype)
    padded[:, 1:-1] = labels
    change = padded[:, 1:] != padded[:, :-1]  # h × (w+1): boundary before column j
    rows, cols = np.nonzero(change)
    # consecutive change points in a row delimit segments [cols[k], cols[k+1])
    same_row = rows[:-1] == rows[1:]
    starts, stops, rr = cols[:-1][same_row], cols[1:][same_row], rows[:-1][same_row]
    vals = labels[rr, starts] if rr.size else np.zeros(0, dtype=labels.dtype)
    keep = vals != 0
    return rr[keep], starts[keep], stops[keep], vals[keep].astype(np.int64)


def _clean(geom: shapely.Geometry) -> Polygon | MultiPolygon | None:
    """Drop collinear vertices, orient rings (exterior counter-clockwise in x-right/y-up terms)."""
    geom = shapely.simplify(geom, 0.0)
    if not geom.is_valid:  # never expected for unions of squares; make sure anyway
        geom = shapely.make_valid(geom)
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    if not polys:
        return None
    polys = [orient(p, 1.0) for p in polys]
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def labels_to_geometries(labels: np.ndarray) -> dict[int, Polygon | MultiPolygon]:
    """Geometry of every non-zero id of an ``H×W`` integer label image, keyed by id (ascending)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    rows, c0, c1, vals = _runs(labels)
    if vals.size == 0:
        return {}
    boxes = shapely.box(c0, rows, c1, rows + 1)
    order = np.argsort(vals, kind="stable")
    ids, first = np.unique(vals[order], return_index=True)
    groups = np.split(boxes[order], first[1:])
    out: dict[int, Polygon | MultiPolygon] = {}
    for i, group in zip(ids.tolist(), groups):
        geom = _clean(shapely.union_all(group))
        if geom is not None:
            out[int(i)] = geom
    return out


def mask_to_geometry(mask: np.ndarray) -> Polygon | MultiPolygon | None:
    """Geometry of the true pixels of an ``H×W`` bool mask; ``None`` when the mask is empty."""
    return labels_to_geometries(np.asarray(mask, dtype=bool)).get(1)


def geometry_to_mask(geom: shapely.Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise ``geom`` by pixel centres into an ``H×W`` bool mask (the inverse of the above)."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w]
    return shapely.contains_xy(geom, cc.ravel() + 0.5, rr.ravel() + 0.5).reshape(h, w)


def feature(geom: Polygon | MultiPolygon, properties: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON Feature dict with float ``[x, y]`` coordinates and the given properties."""
    g = mapping(geom)
    return {"type": "Feature", "geometry": _lists(g), "properties": properties}


def _lists(obj: Any) -> Any:
    """Tuples to lists (JSON arrays) recursively; coordinates as floats."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, (int, float)) for v in obj):
            return [float(v) for v in obj]
        return [_lists(v) for v in obj]
    return obj
